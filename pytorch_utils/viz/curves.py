"""Training curves from a ``History`` (a list of per-epoch dicts)."""
import math
import numbers
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure

from pytorch_utils.errors import ConfigError
from pytorch_utils.train.history import as_records
from pytorch_utils.viz.images import PathLike, finish, new_figure

__all__ = ["plot_history", "clean_history"]


def _number(value) -> Optional[float]:
    """A finite float, or None for missing / None / NaN / non-numeric values."""
    if hasattr(value, "item"):  # numpy scalars and one-element tensors (a history that stored loss tensors)
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # more than one element: not a per-epoch number
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def clean_history(history: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The records of a run as they should be plotted: one per epoch, in epoch order.

    A record without "epoch" is numbered one after the previous record. When a run was resumed from a checkpoint,
    the history holds the epochs after the checkpoint twice; a record whose epoch is not after the previous one
    starts a new segment that supersedes every earlier record from that epoch on (so the last record of each epoch
    wins, and stale epochs the resumed run never reached are dropped).

    Args:
        history: list of dicts (a ``History``).
    Returns:
        a new list of dicts sorted by epoch, with unique epochs.
    """
    kept: List[Dict[str, Any]] = []
    last_epoch = 0.0
    for rec in history:
        if not isinstance(rec, Mapping):
            raise ConfigError(f"history records must be dicts, got {type(rec).__name__}")
        epoch = _number(rec.get("epoch"))
        epoch = last_epoch + 1 if epoch is None else epoch
        if kept and epoch <= kept[-1]["epoch"]:
            kept = [r for r in kept if r["epoch"] < epoch]
        rec = dict(rec)
        rec["epoch"] = int(epoch) if float(epoch).is_integer() else epoch
        kept.append(rec)
        last_epoch = epoch
    return kept


def _series(records, key):
    xs, ys = [], []
    for rec in records:
        y = _number(rec.get(key))
        if y is not None:
            xs.append(rec["epoch"])
            ys.append(y)
    return xs, ys


def _mark_events(ax, stops, boundaries, label_phases: bool) -> None:
    for x, name in boundaries:
        ax.axvline(x, color="gray", linestyle=":", linewidth=1)
        if label_phases:
            ax.annotate(f"phase: {name}", xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                        textcoords="offset points", ha="left", va="top", fontsize=7, color="dimgray")
    for x in stops:
        ax.axvline(x, color="crimson", linestyle="--", linewidth=1.2, label=f"early stop (epoch {x})")


def _integer_epochs(ax) -> None:
    """Whole-epoch ticks: a 3-epoch run would otherwise get 1.0, 1.5, 2.0, ... (epochs are counted, not measured)."""
    from matplotlib.ticker import MaxNLocator

    # min_n_ticks=1: with the default 2 a one-epoch run has a single integer in view and falls back to 0.945, ...
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _format_linear_lr(ax, values: List[float]) -> None:
    """Readable ticks on a linear LR axis.

    A constant or nearly constant LR (0.1 falling to 0.09995) makes matplotlib zoom into the tiny range and label
    it 0.099975, 0.099980, ... (or with an offset); widen such a range to +-10% of its level and print ticks with at
    most 4 significant digits (enough for any tick step of a range spanning 5% or more).
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    lo, hi = min(values), max(values)
    level = max(abs(lo), abs(hi))
    if level > 0 and hi - lo < 0.05 * level:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - 0.1 * level, mid + 0.1 * level)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))  # round steps: 0.095, not 0.0925
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.4g}"))


def plot_history(history: Union[PathLike, Sequence[Mapping[str, Any]]], save: Optional[PathLike] = None,
                 title: Optional[str] = None) -> Figure:
    """Loss and accuracy (train and test) per epoch, and the learning rate on its own panel.

    Handles real-world histories: keys that are missing or None in some epochs are skipped point by point; resumed
    runs are de-duplicated (see :func:`clean_history`); a record with ``early_stop`` True gets a red dashed line;
    when records carry "phase", each phase change gets a dotted line labelled with the new phase. The LR axis is
    logarithmic when the LR spans more than one decade (else a nearly constant LR gets a widened, plainly labelled
    axis). Epoch ticks are whole numbers. The best test accuracy is starred.

    Args:
        history: list of per-epoch dicts with "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"; or a
            run folder, its ``history.json`` or its ``history.csv`` (read with ``train.history.read_history``; a
            run cut off mid-way has both files up to its last finished epoch).
        save: PNG path; title: figure title.
    Returns:
        the Figure (3 panels, or 2 when no record has an LR).
    Raises:
        ConfigError: the history is empty, or a path holds no readable history.
    """
    records = clean_history(as_records(history))
    if not records:
        raise ConfigError("plot_history needs at least one epoch record; the history is empty")

    stops = [r["epoch"] for r in records if r.get("early_stop") is True]
    boundaries = []
    prev_phase = records[0].get("phase")
    for a, b in zip(records, records[1:]):
        phase = b.get("phase")
        if phase is not None and phase != prev_phase:
            boundaries.append(((a["epoch"] + b["epoch"]) / 2, phase))
        if phase is not None:
            prev_phase = phase

    lr_x, lr_y = _series(records, "lr")
    panels = 3 if lr_y else 2
    fig = new_figure((5.0 * panels, 3.8))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    marker = "o" if len(records) <= 30 else None  # dots help short runs; they clutter long ones

    for ax, metric, ylabel in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy (%)")):
        drawn = False
        for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
            xs, ys = _series(records, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, color=color, marker=marker, markersize=3, label=split)
                drawn = True
        if metric == "acc":
            xs, ys = _series(records, "test_acc")
            if ys:
                best = int(np.argmax(ys))
                ax.plot([xs[best]], [ys[best]], marker="*", markersize=12, color="gold", markeredgecolor="black",
                        linestyle="none", label=f"best test {ys[best]:.2f}% (epoch {xs[best]})")
        if not drawn:
            ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
        _mark_events(ax, stops, boundaries, label_phases=ax is axes[0])
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.split(" ")[0])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)

    if lr_y:
        ax = axes[2]
        ax.plot(lr_x, lr_y, color="tab:green", marker=marker, markersize=3)
        positive = [v for v in lr_y if v > 0]
        if positive and len(positive) == len(lr_y) and max(positive) / min(positive) > 10:
            ax.set_yscale("log")
        else:
            _format_linear_lr(ax, lr_y)
        _mark_events(ax, stops, boundaries, label_phases=False)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
        ax.set_ylabel("learning rate")
        ax.set_title("learning rate")
        ax.grid(alpha=0.3)

    if title:
        fig.suptitle(title)
    return finish(fig, save)
