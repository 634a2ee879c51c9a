"""Misclassified images: which ones (first or worst), a titled grid, and a helper that runs the model."""
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from pytorch_utils.errors import ConfigError
from pytorch_utils.io import PathLike
from pytorch_utils.viz.images import empty_figure, finish, image_grid, imshow, to_display, to_numpy, true_pred_title

__all__ = ["find_misclassified", "plot_misclassified", "select_misclassified"]


def _labels(x) -> np.ndarray:
    arr = to_numpy(x)
    return (arr.argmax(axis=1) if arr.ndim == 2 else arr).astype(np.int64)  # (N, C) scores or soft targets: argmax


def find_misclassified(preds, targets, probs=None, losses=None, k: Optional[int] = None,
                       order: str = "first") -> np.ndarray:
    """At most ``k`` (None: all) int64 indices i with ``preds[i] != targets[i]`` (labels (N,), or (N, C) scores).

    ``order`` "first" keeps dataset order; "worst" sorts by highest ``losses`` (N,), else by lowest true-class
    ``probs`` (N, C); ties keep dataset order.
    Raises ConfigError for another ``order`` or "worst" without probs or losses, ValueError (numpy's) for
    preds and targets of different lengths.
    """
    preds, targets = _labels(preds), _labels(targets)
    if order not in ("first", "worst") or (order == "worst" and probs is None and losses is None):
        raise ConfigError(f'order must be "first", or "worst" with probs or losses to rank the mistakes; got {order!r}')
    wrong = np.flatnonzero(preds != targets)
    if order == "worst":
        score = (-to_numpy(losses).reshape(-1).astype(np.float64)[wrong] if losses is not None
                 else to_numpy(probs).astype(np.float64)[wrong, targets[wrong]])
        wrong = wrong[np.argsort(score, kind="stable")]
    return wrong[:k]


def plot_misclassified(images, targets, preds, classes: Optional[Sequence[str]], mean: Optional[Sequence[float]] = None,
                       std: Optional[Sequence[float]] = None, probs=None, k: int = 16, order: str = "worst",
                       ncols: Optional[int] = None, save: Optional[PathLike] = None,
                       title: Optional[str] = None) -> Figure:
    """A grid of up to ``k`` misclassified images (of all those given) titled "true: X" over "pred: Y (87%)".

    ``images`` are normalized float (N, 3, H, W) tensors (need mean/std) or uint8 (N, H, W, 3) arrays. The
    percentage is the predicted class's probability from ``probs`` (N, C); without probs ``order`` "worst" (lowest
    true-class probability first) falls back to "first". Nothing misclassified gives a message figure.
    """
    targets_np, preds_np = _labels(targets), _labels(preds)
    order = "first" if probs is None else order
    idx = find_misclassified(preds_np, targets_np, probs=probs, k=k, order=order)
    if len(idx) == 0:
        return empty_figure("no misclassified images", save)
    # Only the chosen rows are converted, not the whole set.
    chosen = images[torch.as_tensor(idx, device=images.device)] if torch.is_tensor(images) else np.asarray(images)[idx]
    imgs = to_display(chosen, mean, std)
    probs_np = to_numpy(probs)[idx] if probs is not None else None
    fig, axes = image_grid(len(idx), ncols, (1.9, 2.05), 0.3)
    for j, (ax, i) in enumerate(zip(axes, idx)):
        imshow(ax, imgs[j])
        conf = f" ({100 * float(probs_np[j, preds_np[i]]):.0f}%)" if probs_np is not None else ""
        true_pred_title(ax, classes, targets_np[i], preds_np[i], conf)
    ranking = "lowest true-class probability first" if order == "worst" else "dataset order"
    fig.suptitle(title or f"{len(idx)} misclassified ({ranking})", fontsize=10)
    return finish(fig, save)


def select_misclassified(res: Dict[str, Any], k: Optional[int] = 16, order: str = "worst") -> Dict[str, Any]:
    """The misclassified part of an ``evaluate(..., return_outputs=True, return_inputs=True)`` result.

    ``k``, ``order`` as in :func:`find_misclassified` ("worst": highest cross-entropy first). Returns a dict of
    ``indices`` (int64 numpy), CPU tensors ``images``, ``targets``, ``preds``, ``probs``, ``losses`` of the chosen
    items, and ``acc`` (percent), ``num_wrong`` and ``samples`` of the whole set.
    """
    losses = F.cross_entropy(res["logits"].float(), res["targets"], reduction="none")
    idx = find_misclassified(res["preds"], res["targets"], losses=losses, k=k, order=order)
    t = torch.as_tensor(idx, dtype=torch.long)
    chosen = {key: res[key][t] for key in ("targets", "preds", "probs")}
    return {"indices": idx, "images": res["inputs"][t], **chosen, "losses": losses[t], "acc": res["acc"],
            "num_wrong": int((res["preds"] != res["targets"]).sum()), "samples": int(len(res["targets"]))}
