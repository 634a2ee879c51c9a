"""Confusion matrix, per-class accuracy, the most confused class pairs, and per-class precision/recall/F1 (sklearn)."""
import csv
import io
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pytorch_utils.viz.images import PathLike, axes_and_figure, class_name, finish, to_numpy

__all__ = ["confusion_matrix", "plot_confusion_matrix", "per_class_accuracy", "plot_per_class_accuracy",
           "most_confused_pairs", "per_class_report", "per_class_markdown", "per_class_csv"]

ANNOTATE_MAX_CLASSES = 20  # beyond this the numbers overlap and the heatmap colours say more


def _labels(x) -> np.ndarray:
    return to_numpy(x).reshape(-1).astype(np.int64)


def confusion_matrix(targets, preds, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, pred]``: int64 numpy (num_classes, num_classes) for labels (N,) in ``[0, num_classes)``,
    as ``sklearn.metrics.confusion_matrix(targets, preds, labels=range(num_classes))`` (a test pins them). Raises
    ValueError (numpy's) for different lengths or a label outside the range."""
    pairs = np.stack([_labels(targets), _labels(preds)])  # different lengths: ValueError
    flat = np.ravel_multi_index(tuple(pairs), (num_classes, num_classes))  # a label out of range: ValueError
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def _names(classes: Optional[Sequence[str]], n: int) -> List[str]:
    """The ``n`` class names as written (tables; plots draw :func:`class_name`), numbers where names are missing."""
    return [str(classes[i]) if classes is not None and i < len(classes) else str(i) for i in range(n)]


def per_class_accuracy(cm) -> np.ndarray:
    """Accuracy (recall) of each true class of ``cm`` in percent: float64 (C,), NaN for classes with no samples."""
    cm = to_numpy(cm).astype(np.float64)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, 100.0 * np.diag(cm) / support, np.nan)


def most_confused_pairs(cm, classes: Optional[Sequence[str]] = None,
                        k: Optional[int] = 10) -> List[Tuple[str, str, int]]:
    """At most ``k`` (None: all) off-diagonal non-zero cells as ``(true_name, pred_name, count)``, highest count
    first; ties keep (true, pred) index order."""
    off = to_numpy(cm).copy()
    names = _names(classes, off.shape[0])
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off > 0)  # row-major order, so the stable sort breaks ties by (true, pred)
    order = np.argsort(-off[rows, cols], kind="stable")
    return [(names[rows[i]], names[cols[i]], int(off[rows[i], cols[i]])) for i in order][:k]


def _tick_fontsize(ax, n: int) -> float:
    """Label size (points) that fits one label per cell along the x axis of ``ax`` (also a caller's axes)."""
    axis_inches = ax.get_position().width * ax.figure.get_figwidth()
    slot_points = axis_inches * 72.0 / max(n, 1)
    return float(np.clip(0.7 * slot_points, 4.5, 10.0))


def plot_confusion_matrix(cm, classes: Optional[Sequence[str]] = None, normalize: Union[bool, str] = False, ax=None,
                          save: Optional[PathLike] = None, title: Optional[str] = None,
                          hide_diagonal: Optional[bool] = None) -> Figure:
    """The confusion matrix as a seaborn heatmap (rows true, columns predicted; values written up to 20 classes).

    ``normalize`` "true" (or True) divides each row by its total. ``hide_diagonal`` greys out the correct predictions
    so the colours span the mistakes only (default: beyond 20 classes, where the diagonal makes all else white).
    """
    import seaborn as sns  # local: seaborn's import is slow and only this plot needs it

    cm = to_numpy(cm)
    n = cm.shape[0]
    names = [class_name(classes, i) for i in range(n)]
    hide_diagonal = n > ANNOTATE_MAX_CLASSES if hide_diagonal is None else hide_diagonal
    if normalize:
        support = cm.sum(axis=1, keepdims=True).astype(np.float64)
        data = np.divide(cm, support, out=np.zeros(cm.shape, dtype=np.float64), where=support > 0)
        fmt, vmax, cbar_label, ticks = ".2f", 1.0, "fraction of the true class", None
    else:
        data, fmt, vmax, cbar_label = cm, "d", None, "count"
        ticks = MaxNLocator(integer=True)  # counts: no 2.5-image ticks
    mask = None
    if hide_diagonal:
        mask = np.eye(n, dtype=bool)
        off = data[~mask]
        # The largest mistake sets the top of the scale (at least 1 count / a tiny fraction, so all-zero still draws).
        vmax = max(float(off.max()) if off.size else 0.0, 1.0 if not normalize else 1e-3)
        cbar_label += " (mistakes only)"
    cbar_kws = {"label": cbar_label, "shrink": 0.8, "ticks": ticks}
    side = float(np.clip(0.5 * n + 2.5, 6.0, 16.0))
    fig, ax = axes_and_figure(ax, (side + 1.2, side))
    annotate = n <= ANNOTATE_MAX_CLASSES
    sns.heatmap(data, ax=ax, annot=annotate, fmt=fmt, cmap="Blues", vmin=0, vmax=vmax, square=True, mask=mask,
                xticklabels=names, yticklabels=names, cbar_kws=cbar_kws,
                annot_kws={"fontsize": 8 if n > 10 else 9})
    if hide_diagonal:
        ax.set_facecolor("0.8")  # masked (diagonal) cells show the axes background: grey reads as "not shown"
    size = _tick_fontsize(ax, n)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45 if n <= 20 else 90, ha="right" if n <= 20 else "center",
                       rotation_mode="anchor" if n <= 20 else "default", fontsize=size)
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0, fontsize=size)
    ax.set(xlabel="predicted", ylabel="true")
    total = int(cm.sum())
    acc = 100.0 * np.trace(cm) / total if total else float("nan")
    kind = " (normalized by true class)" if normalize else ""
    hidden = "\ndiagonal (correct) hidden in grey: colours show the mistakes only" if hide_diagonal else ""
    ax.set_title(title or f"confusion matrix{kind}, accuracy {acc:.2f}% of {total}{hidden}")
    return finish(fig, save)


HORIZONTAL_MIN_CLASSES = 31  # from here on the bars are horizontal: one readable row per class


def plot_per_class_accuracy(cm, classes: Optional[Sequence[str]] = None, ax=None, save: Optional[PathLike] = None,
                            title: Optional[str] = None, order: Optional[str] = None) -> Figure:
    """Bar chart of :func:`per_class_accuracy` with values on the bars and a dashed overall-accuracy line.

    Beyond 30 classes the bars are horizontal, one readable row per class, and ``order`` defaults to "sorted"
    (weakest first) instead of "index".
    """
    cm = to_numpy(cm)
    n = cm.shape[0]
    order = order or ("sorted" if n >= HORIZONTAL_MIN_CLASSES else "index")
    acc = per_class_accuracy(cm)
    # NaN (no samples) sorts last; a stable sort keeps class order among ties.
    weakest_first = np.argsort(np.where(np.isnan(acc), np.inf, acc), kind="stable")
    idx = {"sorted": weakest_first, "index": np.arange(n)}[order]  # another order: KeyError
    acc, names = acc[idx], [class_name(classes, i) for i in idx]
    horizontal = n >= HORIZONTAL_MIN_CLASSES
    figsize = (7.5, max(4.0, 0.2 * n + 1.2)) if horizontal else (float(np.clip(0.6 * n + 2, 6.0, 24.0)), 4.2)
    fig, ax = axes_and_figure(ax, figsize)
    pos = np.arange(n)
    values = np.nan_to_num(acc, nan=0.0)
    labels = ["n/a" if np.isnan(a) else f"{a:.1f}" for a in acc]
    # The overall line goes under the bars and labels (zorder), and the labels get a white box, so the dashed line
    # never strikes through a number.
    total = int(cm.sum())
    if total:
        overall = 100.0 * np.trace(cm) / total
        line = ax.axvline if horizontal else ax.axhline
        line(overall, color="crimson", linestyle="--", linewidth=1, zorder=1, label=f"overall {overall:.2f}%")
    if horizontal:
        bars = ax.barh(pos, values, height=0.75, color="tab:blue", edgecolor="none", zorder=2)
        row_points = ax.get_position().height * fig.get_figheight() * 72.0 / n  # also right for a caller's axes
        label_size = float(np.clip(0.55 * row_points, 4.5, 9.0))
        ax.set_yticks(pos, names, fontsize=label_size)
        # First (weakest, when sorted) class at the top; room for the value labels right of 100% bars.
        ax.set(ylim=(n - 0.4, -0.6), xlim=(0, 112), xlabel="accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
        ax.xaxis.set_ticks_position("both")  # an axis at the top too: the bottom one is far away on tall figures
        ax.tick_params(axis="x", labeltop=True)
    else:
        bars = ax.bar(pos, values, color="tab:blue", edgecolor="none", zorder=2)
        label_size = 8
        ax.set_xticks(pos, names, rotation=45, ha="right", rotation_mode="anchor", fontsize=_tick_fontsize(ax, n))
        ax.set(xlim=(-0.6, n - 0.4), ylim=(0, 108), ylabel="accuracy (%)")  # headroom for labels above 100% bars
        ax.grid(axis="y", alpha=0.3)
    label_box = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
    ax.bar_label(bars, labels=labels, fontsize=label_size, padding=2, bbox=label_box, zorder=3)
    ax.set_axisbelow(True)
    # The overall value goes in the title, not a legend: any legend corner covers some bar's value label.
    sorted_note = ", weakest first" if order == "sorted" else ""
    overall_note = f" (dashed line: overall {overall:.2f}%)" if total else ""
    ax.set_title(title or f"per-class accuracy{sorted_note}{overall_note}")
    return finish(fig, save)


def per_class_report(targets, preds, classes: Optional[Sequence[str]] = None,
                     num_classes: Optional[int] = None) -> List[dict]:
    """Precision, recall, F1 and support per class, then the "macro avg" and "weighted avg" rows, as dicts
    ``{"class", "precision", "recall", "f1", "support"}`` (fractions, int counts), as ``classification_report``.

    A class without predictions or samples gets 0; ``num_classes`` defaults to ``len(classes)``, else the largest
    label + 1.
    """
    from sklearn.metrics import precision_recall_fscore_support

    targets, preds = _labels(targets), _labels(preds)
    n = len(classes) if classes is not None else num_classes or int(max(targets.max(), preds.max())) + 1
    names = _names(classes, n)
    labels = list(range(n))

    def row(name, p, r, f, s) -> dict:
        return {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}

    p, r, f, s = precision_recall_fscore_support(targets, preds, labels=labels, zero_division=0)
    rows = [row(names[i], p[i], r[i], f[i], s[i]) for i in labels]
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = precision_recall_fscore_support(targets, preds, labels=labels, average=avg, zero_division=0)
        rows.append(row(f"{avg} avg", pa, ra, fa, s.sum()))
    return rows


def per_class_markdown(rows: Sequence[dict]) -> str:
    """A :func:`per_class_report` as a Markdown table (percentages with one decimal)."""
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {str(r['class']).replace('|', '/')} | {100 * r['precision']:.1f}% | {100 * r['recall']:.1f}% | "
              f"{100 * r['f1']:.1f}% | {r['support']} |" for r in rows]
    empty = [str(r["class"]) for r in rows if r["support"] == 0 and not str(r["class"]).endswith(" avg")]
    if empty:  # sklearn reports 0 for them (zero_division=0): say why, beside the table
        lines += ["", f"No test images for: {', '.join(empty)} (their recall and F1 are undefined, shown as 0)."]
    return "\n".join(lines) + "\n"


def per_class_csv(rows: Sequence[dict]) -> str:
    """A :func:`per_class_report` as CSV text (fractions with 6 decimals)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    writer.writerows([[r["class"], f"{r['precision']:.6f}", f"{r['recall']:.6f}", f"{r['f1']:.6f}", r["support"]]
                      for r in rows])
    return out.getvalue()
