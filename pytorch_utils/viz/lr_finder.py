"""Plot of an LR range test: smoothed loss vs LR with the suggested LR_max and LR_min marked."""
from typing import Optional

import numpy as np
from matplotlib.figure import Figure

from pytorch_utils.viz.images import PathLike, axes_and_figure, finish

__all__ = ["plot_lr_finder"]


def plot_lr_finder(result, ax=None, save: Optional[PathLike] = None) -> Figure:
    """Smoothed loss vs LR (log x axis) of a ``find_lr`` result, with ``lr_max`` (point and line) and ``lr_min``
    (dashed) marked and the rule in the title; the y range ends a little past the loss minimum, so a diverging tail
    runs off the top. Draws into ``ax`` when given; returns the figure (saved as PNG to ``save``)."""
    fig, ax = axes_and_figure(ax, (7.0, 4.5))
    lrs, losses = np.asarray(result.lrs, dtype=np.float64), np.asarray(result.losses, dtype=np.float64)
    lo, hi = result.skip_start, len(losses) - result.skip_end
    # The skipped ends are drawn faintly: shown for honesty, but they took no part in the suggestion.
    ax.plot(lrs, losses, color="tab:blue", alpha=0.3, linewidth=1)
    ax.plot(lrs[lo:hi], losses[lo:hi], color="tab:blue", linewidth=1.8, label="smoothed loss")
    ax.scatter([result.lr_max], [losses[result.suggestion_index]], s=70, color="tab:red", zorder=3)
    for lr, text, color, style in ((result.lr_max, "LR_max", "tab:red", "-"),
                                   (result.lr_min, "LR_min", "tab:green", "--")):
        ax.axvline(lr, color=color, linewidth=1.2, linestyle=style, label=f"{text} = {lr:.2e}")
        # Named where it stands as well as in the legend (the legend can sit far from the line).
        ax.annotate(text, xy=(lr, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", ha="left", va="top", color=color, fontsize=9, fontweight="bold")
    shown = losses[:lo + int(np.argmin(losses[lo:hi])) + max(3, len(losses) // 10) + 1]
    low, high = float(shown.min()), float(shown.max())
    span = high - low if high > low else 0.05 * max(abs(high), 1.0)
    name = "steepest descent" if result.suggestion == "steepest" else result.suggestion
    ax.set(xscale="log", ylim=(low - 0.05 * span, high + 0.08 * span), xlabel="learning rate (log scale)",
           ylabel="smoothed training loss", title=f"LR finder: {name}, LR_min = LR_max / {result.div:g}"
           + ("\n(sweep stopped early: the loss diverged)" if result.diverged else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    return finish(fig, save)
