import json
import re
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from viz_helpers import CLASSES, MEAN, STD, TinyCamNet, leftover_hooks, model_flags, partly_frozen

from pytorch_utils.errors import ConfigError, DatasetError
from pytorch_utils.train.loop import evaluate
from pytorch_utils.viz import ReportData, ReportSettings, per_class_report, report, report_run, show_report

report_mod = sys.modules["pytorch_utils.viz.report"]  # `pytorch_utils.viz.report` the attribute is the function

HISTORY = [{"epoch": e, "train_loss": 2 / e, "train_acc": 30 + 5 * e, "test_loss": 2.1 / e, "test_acc": 28 + 4 * e,
            "lr": 0.01 * e} for e in range(1, 6)]


class _DS(TensorDataset):
    mean, std, classes = MEAN, STD, CLASSES


def _loader(norm_images):
    targets = torch.arange(len(norm_images)) % 10
    return DataLoader(_DS(norm_images, targets), batch_size=6)


def _data(model, loader, classes=CLASSES, stats=True, **kwargs):
    """What a caller gathers for report: one evaluation (viz never evaluates), the model only for GradCAM."""
    res = evaluate(model, loader, return_outputs=True, return_inputs=True)
    return ReportData(evaluation=res, classes=classes, mean=MEAN if stats else None, std=STD if stats else None,
                      model=model, **kwargs)


def _flip_transform(img):
    """uint8 HWC -> normalized CHW, randomly flipped and brightened (a stand-in for a training preset)."""
    x = torch.from_numpy(img).float().div(255).permute(2, 0, 1)
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    x = (x * (0.6 + 0.8 * torch.rand(()))).clamp(0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def test_report_writes_everything(tmp_path, tiny_model, norm_images, monkeypatch):
    calls = []
    batch_figs = []

    def spy_show_batch(*args, **kwargs):
        fig = real_show_batch(*args, **kwargs)
        batch_figs.append(fig)
        return fig

    real_show_batch = report_mod.show_batch
    monkeypatch.setattr(report_mod, "show_batch", spy_show_batch)

    def fake_plot_lr_finder(result, ax=None, save=None):  # stands in for the LR-finder author's plot
        from matplotlib.figure import Figure
        calls.append(result)
        fig = Figure(figsize=(4, 3))
        fig.add_subplot().plot(result["lrs"], result["losses"])
        fig.savefig(save)
        return fig

    monkeypatch.setitem(sys.modules, "pytorch_utils.viz.lr_finder",
                        types.SimpleNamespace(plot_lr_finder=fake_plot_lr_finder))
    model = partly_frozen(tiny_model, tiny_model.features[1])  # per-module modes must survive the report
    before = model_flags(model)
    lr_result = {"lrs": [1e-4, 1e-3, 1e-2], "losses": [2.3, 1.9, 3.0]}
    out = tmp_path / "report"
    paths = report(_data(model, _loader(norm_images), classes=None, history=HISTORY, lr_finder=lr_result,
                         train_transform=_flip_transform), out, k=6, batch_k=8)
    assert model_flags(model) == before and not model.features[1].training
    assert leftover_hooks(model) == []
    assert calls == [lr_result]
    pngs = {"curves", "lr_finder", "batch", "augmentations", "misclassified", "gradcam", "confusion_matrix",
            "confusion_matrix_normalized", "per_class_accuracy"}
    # The batch grid: the first test images, de-normalized, titled with class names (true and predicted).
    (fig,) = batch_figs
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 8
    np.testing.assert_allclose(shown[0].images[0].get_array(),
                               (norm_images[0] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1))
                               .clamp(0, 1).permute(1, 2, 0).numpy(), atol=1e-5)
    picked = np.linspace(0, len(norm_images) - 1, 8).round().astype(int)  # spread over the set, not its head
    assert [ax.get_title().split("\n")[0] for ax in shown] == [f"true: {i % 10}" for i in picked]  # no names given
    assert all(ax.get_title().split("\n")[1].startswith("pred: ") for ax in shown)
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
    assert "(explaining the predicted class)" in md
    # Every image is in SECTIONS, so the index shows it in a fixed place.
    assert {key for key, _ in report_mod.SECTIONS} >= pngs
    assert md.index("](batch.png)") < md.index("](misclassified.png)")
    assert "Best test accuracy | 48.00% (epoch 5)" in md
    assert "Final test accuracy | 48.00%" in md
    assert "| true | predicted | count |" in md
    assert "<tr><td>Best test accuracy</td><td>48.00% (epoch 5)</td></tr>" in html  # the page is index.md's
    assert html.count("<table>") == md.count("|---|") == 3 and html.count("<img ") == len(pngs)
    # every row of the pairs table names two classes and a count, highest count first
    counts = [int(m) for m in re.findall(r"^\| [a-z0-9]+ \| [a-z0-9]+ \| (\d+) \|$", md, flags=re.M)]
    assert counts and counts == sorted(counts, reverse=True)


def test_report_without_history_and_gradcam_and_show(tmp_path, tiny_model, norm_images):
    loader = DataLoader(TensorDataset(norm_images, torch.arange(len(norm_images)) % 10), batch_size=12)
    paths = report(_data(tiny_model, loader), tmp_path, gradcam=False)
    assert "curves" not in paths and "gradcam" not in paths and "lr_finder" not in paths
    assert "curves.png" not in paths["index_md"].read_text()
    pytest.importorskip("IPython")  # show_report is for notebooks; the test extra (ipykernel) brings IPython
    shown = show_report(paths)
    assert "data:image/png;base64," in shown.data
    assert 'src="confusion_matrix.png"' not in shown.data  # all images embedded
    assert "<h2>Confusion matrix (counts)</h2>" in shown.data  # the index page, captions and all
    pngs_only = show_report({k: v for k, v in paths.items() if v.suffix == ".png"})
    assert pngs_only.data.count("data:image/png;base64,") == len([p for p in paths.values() if p.suffix == ".png"])


def test_report_with_real_lr_finder_plot(tmp_path, tiny_model, norm_images):
    from pytorch_utils.train.lr_finder import LRFinderResult

    lrs = list(np.geomspace(1e-5, 1, 60))
    losses = list(2.3 - np.sin(np.linspace(0, 2.5, 60)))
    result = LRFinderResult(lrs=lrs, losses=losses, raw_losses=losses, lr_max=lrs[30], lr_min=lrs[30] / 10,
                            suggestion="steepest", suggestion_index=30, diverged=False, div=10, skip_start=5,
                            skip_end=5)
    paths = report(_data(tiny_model, _loader(norm_images), history=HISTORY, lr_finder=result), tmp_path,
                   gradcam=False)
    with Image.open(paths["lr_finder"]) as img:
        assert np.asarray(img.convert("L")).std() > 5
    assert "](lr_finder.png)" in paths["index_md"].read_text()


def test_report_gradcam_target_true_and_bad_target(tmp_path, tiny_model, norm_images, monkeypatch):
    gradcam_mod = sys.modules["pytorch_utils.viz.gradcam"]  # the package attribute `gradcam` is the function

    seen = []
    real = gradcam_mod.plot_gradcam

    def spy(*args, **kwargs):
        seen.append(kwargs["target"])
        return real(*args, **kwargs)

    monkeypatch.setattr(gradcam_mod, "plot_gradcam", spy)
    paths = report(_data(tiny_model, _loader(norm_images)), tmp_path, ReportSettings(gradcam_target="true"))
    assert seen == ["true"]
    assert "GradCAM on misclassified images (explaining the true class)" in paths["index_md"].read_text()
    assert "explaining the true class" in paths["index_html"].read_text()
    with pytest.raises(ConfigError, match="gradcam_target"):
        report(_data(tiny_model, _loader(norm_images)), tmp_path, gradcam_target="predicted")
    with pytest.raises(ConfigError, match="unknown settings \\['colour'\\]"):
        report(_data(tiny_model, _loader(norm_images)), tmp_path, colour="red")


def test_report_gradcam_runtime_error_becomes_a_note(tmp_path, tiny_model, norm_images, monkeypatch):
    gradcam_mod = sys.modules["pytorch_utils.viz.gradcam"]  # the package attribute `gradcam` is the function

    def broken(*args, **kwargs):
        raise RuntimeError("one of the variables needed for gradient computation has been modified by an inplace "
                           "operation")

    monkeypatch.setattr(gradcam_mod, "gradcam", broken)
    data = _data(tiny_model, _loader(norm_images), history=HISTORY)
    tiny_model.train()
    paths = report(data, tmp_path)
    assert "gradcam" not in paths
    md = paths["index_md"].read_text()
    assert "GradCAM skipped: RuntimeError: one of the variables" in md
    for name in ("curves", "batch", "misclassified", "confusion_matrix", "per_class_accuracy"):
        assert paths[name].exists()  # the rest of the report is still written
    assert tiny_model.training and leftover_hooks(tiny_model) == []


@pytest.mark.parametrize("num_classes, stats", [(100, "CIFAR-100"), (10, "CIFAR-10")])
def test_report_notes_assumed_stats(tmp_path, norm_images, num_classes, stats):
    torch.manual_seed(0)
    model = TinyCamNet(num_classes=num_classes)
    loader = DataLoader(TensorDataset(norm_images, torch.arange(len(norm_images)) * 7 % num_classes), batch_size=6)
    paths = report(_data(model, loader, classes=None, stats=False), tmp_path, gradcam=False)  # no mean/std
    md = paths["index_md"].read_text()
    assert f"assumed the {stats} statistics" in md and "## Notes" in md
    if num_classes == 10:  # given stats: no note (once; 100-class reports take a few seconds)
        paths = report(_data(model, loader, classes=None), tmp_path, gradcam=False)
        assert "assumed the" not in paths["index_md"].read_text()


def test_report_augmentations_from_given_images(tmp_path, tiny_model, norm_images, uint8_images):
    paths = report(_data(tiny_model, _loader(norm_images), train_transform=_flip_transform,
                         train_images=uint8_images), tmp_path, gradcam=False)
    with Image.open(paths["augmentations"]) as img:
        assert np.asarray(img.convert("L")).std() > 5
    paths = report(_data(tiny_model, _loader(norm_images), train_transform=lambda img: 1 / 0), tmp_path / "bad",
                   gradcam=False)  # a broken transform: a note, not a failed report
    assert "augmentations" not in paths
    assert "Augmentation preview skipped: ZeroDivisionError" in paths["index_md"].read_text()


def test_per_class_table_equals_scikit_learn_and_is_written(tmp_path, tiny_model, norm_images):
    from sklearn.metrics import classification_report

    data = _data(tiny_model, _loader(norm_images))
    res = data.evaluation
    rows = per_class_report(res["targets"], res["preds"], CLASSES)
    ref = classification_report(res["targets"].numpy(), res["preds"].numpy(), labels=list(range(10)),
                                target_names=list(CLASSES), output_dict=True, zero_division=0)
    for row in rows:
        want = ref[row["class"]]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (want["precision"], want["recall"], want["f1-score"], want["support"]))
    assert [r["class"] for r in rows] == list(CLASSES) + ["macro avg", "weighted avg"]
    paths = report(data, tmp_path, gradcam=False)
    csv_lines = paths["per_class_csv"].read_text().splitlines()
    assert csv_lines[0] == "class,precision,recall,f1,support" and len(csv_lines) == 13
    assert csv_lines[1].startswith(f"{CLASSES[0]},{rows[0]['precision']:.6f},")
    table = paths["per_class_md"].read_text()
    assert f"| {CLASSES[0]} | {100 * rows[0]['precision']:.1f}% |" in table
    assert "## Per-class precision, recall and F1" in paths["index_md"].read_text()
    assert "<h2>Per-class precision, recall and F1</h2>" in paths["index_html"].read_text()


def test_report_takes_results_and_never_evaluates(tmp_path, tiny_model, norm_images, monkeypatch):
    import pytorch_utils.train.loop as loop

    data = _data(tiny_model, _loader(norm_images), history=HISTORY)
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: pytest.fail("viz.report must not evaluate"))
    monkeypatch.setattr(loop, "fit", lambda *a, **k: pytest.fail("viz.report must not train"))
    paths = report(data, tmp_path, gradcam=False)
    assert paths["index_md"].is_file()


def test_report_history_from_a_run_folder(tmp_path, tiny_model, norm_images):
    from pytorch_utils.train.history import write_history

    (tmp_path / "run").mkdir()  # write_history runs every epoch: it never re-creates a vanished run folder
    write_history(HISTORY, tmp_path / "run")
    paths = report(_data(tiny_model, _loader(norm_images), history=tmp_path / "run"), tmp_path / "r", gradcam=False)
    assert "curves" in paths and "Best test accuracy | 48.00% (epoch 5)" in paths["index_md"].read_text()


def test_index_summarizes_the_deduplicated_history(tmp_path, tiny_model, norm_images):
    hist = HISTORY + [dict(HISTORY[-1], epoch=5, test_acc=99.0, early_stop=True)]  # epoch 5 again: a resumed run
    md = report(_data(tiny_model, _loader(norm_images), history=hist), tmp_path, gradcam=False)["index_md"].read_text()
    assert "| Epochs | 5 (early stopped) |" in md and "| Best test accuracy | 99.00% (epoch 5) |" in md
    assert "| Final train accuracy | 55.00% |" in md
    paths = report(_data(tiny_model, _loader(norm_images), history=[]), tmp_path / "empty", gradcam=False)
    assert "curves" not in paths and "Epochs" not in paths["index_md"].read_text()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished synthetic run (2 epochs) with an LR-finder plot planted where runs save it."""
    from pytorch_utils.recipes import run_recipe

    out = tmp_path_factory.mktemp("run")
    run_recipe("strixbee_l1", data="synthetic", out_dir=out, train_limit=64, test_limit=32, epochs=2, batch_size=16,
               num_workers=0, progress=False)
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (32, 1))).save(out / "lr_finder.png")
    return out


LIGHT = {"gradcam": False, "k": 0, "batch_k": 0}  # a quicker report where the plots are not the point


def _copy_run(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def _evaluated_acc(paths) -> float:
    return float(re.search(r"\| Test accuracy \(this evaluation\) \| ([\d.]+)%", paths["index_md"].read_text())[1])


def test_report_run_rebuilds_the_report_from_the_folder_alone(finished_run, tmp_path):
    history = json.loads((finished_run / "history.json").read_text())
    best = json.loads((finished_run / "summary.json").read_text())["best_epoch"]
    paths = report_run(finished_run)
    for name in ("curves", "lr_finder", "batch", "misclassified", "gradcam", "confusion_matrix", "per_class_accuracy",
                 "per_class_md", "per_class_csv", "index_md", "index_html"):
        assert paths[name].is_file() and paths[name].parent == finished_run / "report", name
    assert paths["lr_finder"].read_bytes() == (finished_run / "lr_finder.png").read_bytes()
    index = paths["index_md"].read_text()
    assert index.startswith(f"# Report of {finished_run.name} (best.pt)") and "](lr_finder.png)" in index
    assert _evaluated_acc(paths) == pytest.approx(history[best - 1]["test_acc"], abs=0.005)  # best.pt's epoch
    assert len(paths["per_class_csv"].read_text().splitlines()) == 1 + 10 + 2


def test_report_run_of_a_cut_off_run_uses_its_newest_checkpoint(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    for name in ("checkpoints/best.pt", "summary.json"):  # what a run cut off mid-way lacks
        (run / name).unlink()
    last_acc = json.loads((run / "history.json").read_text())[-1]["test_acc"]
    paths = report_run(run)
    assert paths["index_md"].read_text().startswith("# Report of run (epoch-0002.pt)")
    assert _evaluated_acc(paths) == pytest.approx(last_acc, abs=0.005)
    assert "curves" in paths and "gradcam" in paths
    last = report_run(finished_run, tmp_path / "last", last=True, **LIGHT)  # the newest checkpoint beside best.pt
    assert last["index_md"].read_text().startswith(f"# Report of {finished_run.name} (epoch-0002.pt)")


def test_report_run_without_its_test_set_writes_the_curves_and_says_what_was_skipped(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "data": str(tmp_path / "moved.zip")}))
    paths = report_run(run)
    assert sorted(paths) == ["curves", "lr_finder"] and all(p.is_file() for p in paths.values())
    out = capsys.readouterr().out
    assert "moved.zip' does not exist" in out and "wrote only curves and lr_finder" in out
    assert "confusion matrix, per-class table and GradCAM pass data=" in out and len(out.strip().splitlines()) == 1
    assert "per_class_md" in report_run(run, data="synthetic", **LIGHT)  # data= where the test set is now


def test_report_run_refuses_a_test_set_with_other_classes(finished_run, tmp_path):
    for split in ("train", "test"):
        for name in ("ant", "bee"):
            (tmp_path / "other" / split / name).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(tmp_path / "other" / split / name / "0.png")
    with pytest.raises(DatasetError, match=r"has the classes \['ant', 'bee'\], the run \['class_0'"):
        report_run(finished_run, tmp_path / "rep", data=tmp_path / "other")


def test_report_run_reads_the_images_with_the_runs_own_limits(tmp_path):
    # A run trained with max_side=300 on 264-pixel images: its report refused them at the default 256.
    from pytorch_utils.recipes import run_recipe

    for split, n in (("train", 2), ("test", 1)):
        for i, name in enumerate(("a", "b")):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(np.full((264, 264, 3), 60 + 120 * i + k, np.uint8)).save(
                    tmp_path / "data" / split / name / f"{k}.png")
    run_recipe("strixbee_l1", data=str(tmp_path / "data"), out_dir=tmp_path / "run", epochs=1, batch_size=2,
               max_side=300, num_workers=0, progress=False)
    paths = report_run(tmp_path / "run", **LIGHT)
    assert "Test samples | 2 |" in paths["index_md"].read_text()
