"""Training curves from a ``History`` (a list of per-epoch dicts)."""
import contextlib
import math
import numbers
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from pytorch_utils.errors import ConfigError
from pytorch_utils.train.history import as_records
from pytorch_utils.viz.images import PathLike, finish, new_figure, plot_text

__all__ = ["plot_history", "clean_history"]


def _number(value) -> Optional[float]:
    """A finite float, or None for missing / None / NaN / non-numeric values."""
    # .item(): numpy scalars and one-element tensors (a history that stored loss tensors); more than one element
    # (ValueError, RuntimeError) is no per-epoch number; an int too large for a float (OverflowError): a hostile file.
    with contextlib.suppress(ValueError, RuntimeError, OverflowError):
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value := float(value)):
            return value
    return None


def clean_history(history: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """A new list of the history's records, one per epoch in epoch order.

    A record without "epoch" is numbered after the previous one. A record whose epoch is not after the previous one
    (a resumed run) supersedes every earlier record from that epoch on.
    """
    kept: List[Dict[str, Any]] = []
    last_epoch = 0.0
    for rec in history:
        epoch = _number(rec.get("epoch"))
        epoch = last_epoch + 1 if epoch is None else epoch
        while kept and epoch <= kept[-1]["epoch"]:  # kept is in epoch order: drop from the end (linear time)
            kept.pop()
        kept.append(dict(rec, epoch=int(epoch) if float(epoch).is_integer() else epoch))
        last_epoch = epoch
    return kept


def _series(records, key):
    points = [(rec["epoch"], _number(rec.get(key))) for rec in records]
    return [x for x, y in points if y is not None], [y for _, y in points if y is not None]


MAX_MARKS = 20  # phase changes and early stops drawn per plot


def _mark_events(ax, stops, boundaries, label_phases: bool) -> None:
    for x, name in list(boundaries)[:MAX_MARKS]:  # a history of thousands of phases would take minutes to draw
        ax.axvline(x, color="gray", linestyle=":", linewidth=1)
        if label_phases:
            ax.annotate(f"phase: {plot_text(name)}", xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                        textcoords="offset points", ha="left", va="top", fontsize=7, color="dimgray")
    for x in list(stops)[:MAX_MARKS]:
        ax.axvline(x, color="crimson", linestyle="--", linewidth=1.2, label=f"early stop (epoch {x})")


def _epoch_axes(ax, ylabel: str, title: str) -> None:
    """Labels, grid and whole-epoch ticks (a 3-epoch run would otherwise get 1.0, 1.5, 2.0, ...)."""
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    # min_n_ticks=1: with the default 2, a one-epoch run falls back to 0.945, ...
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)


def _format_linear_lr(ax, values: List[float]) -> None:
    """Readable ticks on a linear LR axis: a nearly constant LR (matplotlib would label 0.099975, 0.099980, ...)
    gets a range widened to +-10% of its level, and ticks show at most 4 significant digits."""
    lo, hi = min(values), max(values)
    level = max(abs(lo), abs(hi))
    if level > 0 and hi - lo < 0.05 * level:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - 0.1 * level, mid + 0.1 * level)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))  # round steps: 0.095, not 0.0925
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.4g}"))


def plot_history(history: Union[PathLike, Sequence[Mapping[str, Any]]], save: Optional[PathLike] = None,
                 title: Optional[str] = None) -> Figure:
    """Loss and accuracy (train and test) per epoch, and the learning rate (if recorded) on a third panel.

    ``history`` is a list of per-epoch dicts, or a run folder / its ``history.json`` / ``history.csv``. Missing or
    None values are skipped, resumed runs de-duplicated (:func:`clean_history`); early stops and phase changes get
    vertical lines, the best test accuracy a star; the LR axis is logarithmic when the LR spans over a decade.
    Raises ConfigError for an empty history or a path without one.
    """
    records = clean_history(as_records(history))
    if not records:
        raise ConfigError("plot_history needs at least one epoch record; the history is empty")

    stops = [r["epoch"] for r in records if r.get("early_stop") is True]
    boundaries, phase = [], records[0].get("phase")
    for a, b in zip(records, records[1:]):
        if b.get("phase") not in (None, phase):  # a record without a phase continues the previous one
            phase = b["phase"]
            boundaries.append(((a["epoch"] + b["epoch"]) / 2, phase))

    lr_x, lr_y = _series(records, "lr")
    panels = 3 if lr_y else 2
    fig = new_figure((5.0 * panels, 3.8))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    marker = "o" if len(records) <= 30 else None  # dots help short runs; they clutter long ones

    for ax, metric, ylabel in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy (%)")):
        for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
            xs, ys = _series(records, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, color=color, marker=marker, markersize=3, label=split)
        if not ax.lines:
            ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
        if metric == "acc":
            xs, ys = _series(records, "test_acc")
            if ys:
                best = int(np.argmax(ys))
                ax.plot([xs[best]], [ys[best]], marker="*", markersize=12, color="gold", markeredgecolor="black",
                        linestyle="none", label=f"best test {ys[best]:.2f}% (epoch {xs[best]})")
        _mark_events(ax, stops, boundaries, label_phases=ax is axes[0])
        _epoch_axes(ax, ylabel, ylabel.split(" ")[0])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)

    if lr_y:
        ax = axes[2]
        ax.plot(lr_x, lr_y, color="tab:green", marker=marker, markersize=3)
        if min(lr_y) > 0 and max(lr_y) / min(lr_y) > 10:
            ax.set_yscale("log")
        else:
            _format_linear_lr(ax, lr_y)
        _mark_events(ax, stops, boundaries, label_phases=False)
        _epoch_axes(ax, "learning rate", "learning rate")

    if title:
        fig.suptitle(title)
    return finish(fig, save)
