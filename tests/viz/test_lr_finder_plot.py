"""The LR-finder plot (viz): marks, y range, axes handling; on hand-made results and on a real sweep."""
import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: tests never open windows

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from pytorch_utils import viz  # noqa: E402
from pytorch_utils.train.lr_finder import LRFinderResult, LRFinderSpec, find_lr, suggest  # noqa: E402
from pytorch_utils.viz.lr_finder import plot_lr_finder  # noqa: E402


def _valley_curve():
    return np.concatenate([np.linspace(2.5, 2.95, 10), np.linspace(2.9, 1.0, 21), np.linspace(1.2, 2.8, 9)]).tolist()


def _dip_after_divergence():
    lrs = np.logspace(-6, 1, 100)
    flat = np.full(10, 2.30)
    descent = 2.30 - 1.2 * (1 - np.cos(np.linspace(0, np.pi, 36))) / 2
    climb = np.linspace(1.25, 2.6, 8)
    dip = np.concatenate([np.linspace(2.55, 2.35, 10), [1.6], np.linspace(1.55, 1.30, 26)])
    tail = np.linspace(1.6, 4.0, 9)
    return lrs.tolist(), np.concatenate([flat, descent, climb, dip, tail]).tolist()


def _result(diverged=False):
    losses = _valley_curve()
    lrs = np.logspace(-6, 1, 40).tolist()
    idx = suggest(lrs, losses, "steepest", 5, 5)
    return LRFinderResult(lrs=lrs, losses=losses, raw_losses=losses, lr_max=lrs[idx], lr_min=lrs[idx] / 10,
                          suggestion="steepest", suggestion_index=idx, diverged=diverged, div=10.0, skip_start=5,
                          skip_end=5)


def test_plot_writes_a_non_blank_png_with_marks_and_rule(tmp_path):
    result = _result(diverged=True)
    path = tmp_path / "assets" / "nested" / "lr_finder.png"
    fig = plot_lr_finder(result, save=path)
    assert path.exists() and path.stat().st_size > 5000
    img = mpimg.imread(path)
    rgb = img[..., :3]
    assert rgb.std() > 0.05, "the PNG looks blank"
    red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.sum() > 50, "the LR_max mark (red) is missing"

    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_title().startswith("LR finder: steepest descent, LR_min = LR_max / 10")
    assert "diverged" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"LR_max = {result.lr_max:.2e}" in labels and f"LR_min = {result.lr_min:.2e}" in labels
    vlines = sorted(line.get_xdata()[0] for line in ax.get_lines() if len(line.get_xdata()) == 2
                    and line.get_xdata()[0] == line.get_xdata()[1])
    assert vlines == pytest.approx(sorted([result.lr_min, result.lr_max]))


def test_plot_y_range_shows_the_start_of_the_sweep_and_cuts_the_divergence():
    lrs, losses = _dip_after_divergence()
    losses[:5] = [2.9, 2.8, 2.6, 2.5, 2.4]  # a high start inside skip_start, above everything in the window before it
    losses[-3:] = [8.0, 12.0, 20.0]          # a diverging tail
    idx = suggest(lrs, losses, "steepest", 10, 5)
    result = LRFinderResult(lrs=lrs, losses=losses, raw_losses=losses, lr_max=lrs[idx], lr_min=lrs[idx] / 10,
                            suggestion="steepest", suggestion_index=idx, diverged=True, div=10.0, skip_start=10,
                            skip_end=5)
    fig = plot_lr_finder(result)
    low, high = fig.axes[0].get_ylim()
    assert low < min(losses) < 1.2           # the minimum (1.10) is in view, with a margin
    assert high > 2.9                        # the very first point is in view
    assert high < 4.0 < 8.0                  # the tail past the minimum does not stretch the axis
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "LR_max" in texts and "LR_min" in texts  # labels next to the lines, not only in the legend


def test_plot_is_reachable_from_viz_and_draws_a_new_figure_per_call():
    result = _result()
    first, second = viz.plot_lr_finder(result), viz.plot_lr_finder(result)
    assert isinstance(first, Figure) and first is not second
    assert first.axes[0].get_title().startswith("LR finder: steepest descent")


def test_find_lr_result_plots_with_the_suggestion_marked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x = torch.randn(128, 3, 2, 2)
    loader = DataLoader(TensorDataset(x, (x[:, 0].mean((1, 2)) > 0).long()), batch_size=16)
    result = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), loader,
                     LRFinderSpec(start_lr=1e-5, end_lr=1.0, num_iter=20))
    ax = plot_lr_finder(result).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"LR_max = {result.lr_max:.2e}" in labels
    marked = ax.collections[0].get_offsets()[0]
    assert marked[0] == pytest.approx(result.lr_max) and marked[1] == pytest.approx(result.losses[
        result.suggestion_index])


def test_plot_draws_on_a_given_axes_and_never_shows(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show() must not be called"))
    fig, (left, right) = plt.subplots(1, 2)
    try:
        out = plot_lr_finder(_result(), ax=right)
        assert out is fig
        assert right.get_lines() and not left.get_lines()
        assert "diverged" not in right.get_title()
    finally:
        plt.close(fig)
