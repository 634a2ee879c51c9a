"""Plot of an LR range test: smoothed loss vs LR with the suggested LR_max and LR_min marked."""
from typing import Optional, Tuple

import numpy as np
from matplotlib.figure import Figure

from pytorch_utils.viz.images import PathLike, axes_and_figure, finish

__all__ = ["plot_lr_finder"]

SUGGESTION_TITLES = {"steepest": "steepest descent", "valley": "valley"}


def y_limits(result) -> Tuple[float, float]:
    """Y range: the curve up to a little past the loss minimum (10% of the points, at least 3), padded; the diverging
    tail runs off the top instead of flattening the rest."""
    losses = np.asarray(result.losses, dtype=np.float64)
    n = len(losses)
    finite = np.isfinite(losses)
    if not finite.any():
        return -0.05, 1.05
    masked = np.where(finite, losses, np.inf)
    start = result.skip_start
    searched = masked[start:max(start, n - result.skip_end)]
    minimum = start + int(np.argmin(searched)) if np.isfinite(searched).any() else int(np.argmin(masked))
    stop = min(n, minimum + max(3, n // 10) + 1)
    shown = losses[:stop][finite[:stop]]
    low, high = float(shown.min()), float(shown.max())
    span = high - low if high > low else 0.05 * max(abs(high), 1.0)
    return low - 0.05 * span, high + 0.08 * span


def plot_lr_finder(result, ax=None, save: Optional[PathLike] = None) -> Figure:
    """Loss vs LR (log x axis) of a ``find_lr`` result, with ``lr_max`` (point and line) and ``lr_min`` (dashed)
    marked; the title states the rule. Draws into ``ax`` when given and returns its figure."""
    fig, ax = axes_and_figure(ax, (7.0, 4.5))
    lrs = np.asarray(result.lrs, dtype=np.float64)
    losses = np.asarray(result.losses, dtype=np.float64)
    lo, hi = result.skip_start, max(result.skip_start, len(losses) - result.skip_end)

    # The skipped ends are drawn faintly: they are shown for honesty but did not take part in the suggestion.
    ax.plot(lrs, losses, color="tab:blue", alpha=0.3, linewidth=1)
    ax.plot(lrs[lo:hi], losses[lo:hi], color="tab:blue", linewidth=1.8, label="smoothed loss")
    ax.scatter([result.lr_max], [losses[result.suggestion_index]], s=70, color="tab:red", zorder=3)
    for lr, text, color, style in ((result.lr_max, "LR_max", "tab:red", "-"),
                                   (result.lr_min, "LR_min", "tab:green", "--")):
        ax.axvline(lr, color=color, linewidth=1.2, linestyle=style, label=f"{text} = {lr:.2e}")
        # Named where it stands as well as in the legend (the legend can sit far from the line).
        ax.annotate(text, xy=(lr, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", ha="left", va="top", color=color, fontsize=9, fontweight="bold")
    ax.set_xscale("log")
    ax.set_ylim(*y_limits(result))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("smoothed training loss")
    name = SUGGESTION_TITLES.get(result.suggestion, result.suggestion)
    title = f"LR finder: {name}, LR_min = LR_max / {result.div:g}"
    if result.diverged:
        title += "\n(sweep stopped early: the loss diverged)"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    return finish(fig, save)
