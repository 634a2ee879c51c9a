import re
import sys
import types

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from pytorch_utils.viz import history_summary, report, show_report

from viz_helpers import CLASSES, MEAN, STD

HISTORY = [{"epoch": e, "train_loss": 2 / e, "train_acc": 30 + 5 * e, "test_loss": 2.1 / e, "test_acc": 28 + 4 * e,
            "lr": 0.01 * e} for e in range(1, 6)]


class _DS(TensorDataset):
    mean, std, classes = MEAN, STD, CLASSES


def _loader(norm_images):
    targets = torch.arange(len(norm_images)) % 10
    return DataLoader(_DS(norm_images, targets), batch_size=6)


def test_history_summary_uses_deduplicated_records():
    hist = HISTORY + [dict(HISTORY[-1], epoch=5, test_acc=99.0, early_stop=True)]
    s = history_summary(hist)
    assert s["epochs"] == 5 and s["best_test_acc"] == 99.0 and s["best_epoch"] == 5 and s["early_stopped"]
    assert s["final_train_acc"] == 55 and history_summary([]) == {}


def test_report_writes_everything(tmp_path, tiny_model, norm_images, monkeypatch):
    calls = []

    def fake_plot_lr_finder(result, ax=None, save=None):  # stands in for the LR-finder author's plot
        from matplotlib.figure import Figure
        calls.append(result)
        fig = Figure(figsize=(4, 3))
        fig.add_subplot().plot(result["lrs"], result["losses"])
        fig.savefig(save)
        return fig

    monkeypatch.setitem(sys.modules, "pytorch_utils.viz.lr_finder",
                        types.SimpleNamespace(plot_lr_finder=fake_plot_lr_finder))
    tiny_model.train()
    lr_result = {"lrs": [1e-4, 1e-3, 1e-2], "losses": [2.3, 1.9, 3.0]}
    out = tmp_path / "report"
    paths = report(tiny_model, _loader(norm_images), None, HISTORY, out, k=6, lr_finder_result=lr_result)
    assert tiny_model.training
    assert calls == [lr_result]
    pngs = {"curves", "lr_finder", "misclassified", "gradcam", "confusion_matrix", "confusion_matrix_normalized",
            "per_class_accuracy"}
    assert pngs <= set(paths)
    for name in pngs:
        assert paths[name].parent == out and paths[name].suffix == ".png"
        with Image.open(paths[name]) as img:
            assert min(img.size) > 100
            assert np.asarray(img.convert("L")).std() > 5
    md = paths["index_md"].read_text()
    html = paths["index_html"].read_text()
    for name in pngs:
        assert f"]({name}.png)" in md
        assert f'src="{name}.png"' in html
    assert "Best test accuracy | 48.00% (epoch 5)" in md
    assert "Final test accuracy | 48.00%" in md
    assert "| true | predicted | count |" in md
    # every row of the pairs table names two classes and a count, highest count first
    counts = [int(m) for m in re.findall(r"^\| [a-z]+ \| [a-z]+ \| (\d+) \|$", md, flags=re.M)]
    assert counts and counts == sorted(counts, reverse=True)


def test_report_without_history_and_gradcam_and_show(tmp_path, tiny_model, norm_images):
    loader = DataLoader(TensorDataset(norm_images, torch.arange(len(norm_images)) % 10), batch_size=12)
    paths = report(tiny_model, loader, CLASSES, None, tmp_path, gradcam=False)  # plain dataset: CIFAR stats
    assert "curves" not in paths and "gradcam" not in paths and "lr_finder" not in paths
    assert "curves.png" not in paths["index_md"].read_text()
    shown = show_report(paths)
    assert "data:image/png;base64," in shown.data
    assert 'src="confusion_matrix.png"' not in shown.data  # all images embedded


def test_report_with_real_lr_finder_plot(tmp_path, tiny_model, norm_images):
    try:
        from pytorch_utils.train.lr_finder import LRFinderResult
        import pytorch_utils.viz.lr_finder  # noqa: F401
    except Exception as exc:  # written in parallel by someone else
        import pytest
        pytest.skip(f"LR finder unavailable: {exc}")
    lrs = list(np.geomspace(1e-5, 1, 60))
    losses = list(2.3 - np.sin(np.linspace(0, 2.5, 60)))
    result = LRFinderResult(lrs=lrs, losses=losses, lr_max=lrs[30], lr_min=lrs[30] / 10, suggestion="steepest",
                            suggestion_index=30, diverged=False, div=10, start_lr=1e-5, end_lr=1, num_iter=60,
                            step_mode="exp", skip_start=5, skip_end=5)
    paths = report(tiny_model, _loader(norm_images), CLASSES, HISTORY, tmp_path, lr_finder_result=result,
                   gradcam=False)
    with Image.open(paths["lr_finder"]) as img:
        assert np.asarray(img.convert("L")).std() > 5
    assert "](lr_finder.png)" in paths["index_md"].read_text()
