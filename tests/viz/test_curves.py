import pytest

from pytorch_utils.errors import ConfigError
from pytorch_utils.viz import plot_history
from pytorch_utils.viz.curves import clean_history


def _rec(epoch, **kw):
    base = {"epoch": epoch, "train_loss": 2.0 / epoch, "train_acc": 50 + epoch, "test_loss": 2.2 / epoch,
            "test_acc": 45 + epoch, "lr": 0.1 * 0.5 ** epoch, "seconds": 1.0}
    base.update(kw)
    return base


def _line(ax, label):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def test_resumed_history_keeps_last_record_per_epoch():
    # Run reached epoch 4, crashed, resumed from the epoch-2 checkpoint and reached epoch 5.
    hist = [_rec(1), _rec(2), _rec(3, test_acc=10.0), _rec(4, test_acc=11.0),
            _rec(3, test_acc=60.0), _rec(4, test_acc=61.0), _rec(5)]
    clean = clean_history(hist)
    assert [r["epoch"] for r in clean] == [1, 2, 3, 4, 5]
    assert [r["test_acc"] for r in clean][2:4] == [60.0, 61.0]
    # A resume that stopped before the stale epochs: the stale epoch 4 must not survive.
    clean = clean_history([_rec(1), _rec(2), _rec(3), _rec(4, test_acc=1.0), _rec(3, test_acc=2.0)])
    assert [r["epoch"] for r in clean] == [1, 2, 3] and clean[-1]["test_acc"] == 2.0


def test_plot_history_resumed_early_stopped_with_gaps(tmp_path, check_png):
    hist = [_rec(1, phase="warmup"), _rec(2, phase="warmup", test_loss=None), _rec(3, phase="main"),
            _rec(2, phase="warmup"), _rec(3, phase="main", lr=None), _rec(4, phase="main"),
            {"epoch": 6, "train_loss": 0.3, "train_acc": 90.0, "test_acc": float("nan"), "lr": 1e-4},  # skipped 5
            _rec(7, phase="main", early_stop=True)]
    path = tmp_path / "deep" / "curves.png"
    fig = plot_history(hist, save=path)
    check_png(path, fig)
    loss_ax, acc_ax, lr_ax = fig.axes[:3]
    train = _line(loss_ax, "train")
    assert list(train.get_xdata()) == [1, 2, 3, 4, 6, 7]  # one point per epoch, in order
    test_acc = _line(acc_ax, "test")
    assert list(test_acc.get_xdata()) == [1, 2, 3, 4, 7]  # NaN at epoch 6 skipped
    assert lr_ax.get_yscale() == "log"  # 0.05 .. 1e-4 spans > 1 decade
    assert list(lr_ax.get_lines()[0].get_xdata()) == [1, 2, 4, 6, 7]  # lr None at (the kept) epoch 3
    stop_lines = [l for l in acc_ax.get_lines() if l.get_label().startswith("early stop")]
    assert len(stop_lines) == 1 and list(stop_lines[0].get_xdata()) == [7, 7]
    # A phase boundary between epochs 2 and 3 (dotted line at 2.5) on every panel.
    for ax in (loss_ax, acc_ax, lr_ax):
        assert any(l.get_linestyle() == ":" and list(l.get_xdata()) == [2.5, 2.5] for l in ax.get_lines())
    best = [l for l in acc_ax.get_lines() if l.get_label().startswith("best test")]
    assert best and best[0].get_ydata()[0] == 52  # epoch 7: 45 + 7


def test_plot_history_short_run_without_lr_and_linear_lr(tmp_path, check_png):
    fig = plot_history([{"epoch": 1, "train_loss": 1.0, "train_acc": 40.0}], save=tmp_path / "one.png")
    check_png(tmp_path / "one.png", fig, min_std=5)
    assert len(fig.axes) == 2  # no LR recorded -> no LR panel
    fig = plot_history([_rec(e, lr=0.01 + 0.001 * e) for e in range(1, 6)])
    assert fig.axes[2].get_yscale() == "linear"


def test_plot_history_empty_raises():
    with pytest.raises(ConfigError):
        plot_history([])


@pytest.mark.parametrize("epochs", [1, 3])
def test_short_run_has_whole_epoch_ticks(epochs):
    fig = plot_history([_rec(e) for e in range(1, epochs + 1)])
    fig.canvas.draw()
    for ax in fig.axes[:3]:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_nearly_constant_lr_axis_is_readable():
    fig = plot_history([_rec(e, lr=0.1 - 0.00001 * e) for e in range(1, 6)])  # 0.09999 .. 0.09995
    fig.canvas.draw()
    ax = fig.axes[2]
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.1 * 0.1  # widened around the level instead of zoomed into a 4e-5 range
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and len(set(labels)) == len(labels)
    assert all(len(s.lstrip("-").replace("0.", "", 1).lstrip("0").replace(".", "")) <= 4 for s in labels), labels
    assert not ax.yaxis.get_offset_text().get_text()  # no "+9.99e-2" offset to add up in your head
    # a genuinely varying linear LR keeps its own range
    fig = plot_history([_rec(e, lr=0.01 * e) for e in range(1, 6)])
    fig.canvas.draw()
    assert fig.axes[2].get_ylim()[1] < 0.06


def test_hostile_history_plots_in_bounded_time(tmp_path, check_png):
    """A 4,000-digit epoch is skipped, 40,000 resumed records clean in linear time, thousands of phases draw 20."""
    import time

    from pytorch_utils.viz.curves import MAX_MARKS

    records = [{"epoch": 10**4000, "train_loss": 1.0}]
    records += [{"epoch": 1 + i % 2, "train_loss": 1.0, "phase": f"p{i}"} for i in range(40000)]
    start = time.perf_counter()
    assert [r["epoch"] for r in clean_history(records)] == [1, 2]
    many = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.0, "phase": f"p{e}"} for e in range(1, 2001)]
    fig = plot_history(many, save=tmp_path / "c.png")
    assert time.perf_counter() - start < 60
    assert len([line for line in fig.axes[0].lines if line.get_linestyle() == ":"]) == MAX_MARKS
    check_png(tmp_path / "c.png", fig)
