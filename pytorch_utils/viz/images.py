"""Image grids (de-normalization, a batch grid, a before/after augmentation grid) and the helpers of every viz plot.

Figures are built as ``matplotlib.figure.Figure`` directly, never through ``pyplot``: pyplot keeps every figure
alive until ``plt.close``, so a plot called in a loop (or by ``report``) would leak memory. A bare ``Figure`` is
garbage-collected, needs no GUI backend, and still renders as a notebook cell's last expression (or via ``display``).
"""
import copy
import math
import random
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pytorch_utils.errors import ConfigError
from pytorch_utils.io import PathLike, atomic_write
from pytorch_utils.utils import get_rng_state, set_rng_state

__all__ = ["denormalize", "show_batch", "show_augmentations", "SAVE_DPI"]

SAVE_DPI = 120  # enough for 32x32 thumbnails and tick labels, small enough for notebooks and git


def new_figure(figsize: Tuple[float, float]) -> Figure:
    """A pyplot-free figure with an Agg canvas (it caches its renderer: with the generic canvas, seaborn measuring
    every tick label made a 100-class heatmap take seconds)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def axes_and_figure(ax, figsize: Tuple[float, float]):
    """``(fig, ax)``: the caller's axes and its figure, or a new single-axes figure."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot(1, 1, 1)


def finish(fig: Figure, save: Optional[PathLike]) -> Figure:
    """Save ``fig`` as PNG when ``save`` is a path (its folder created: plots are saved by a user's call or
    before training, never mid-run; through ``io.atomic_write``, so a symlink at ``save`` is replaced) and return it."""
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(save, lambda tmp: fig.savefig(tmp, format="png", dpi=SAVE_DPI, bbox_inches="tight",
                                                   facecolor="white"))
    return fig


def to_numpy(x) -> np.ndarray:
    """A tensor (detached, on the CPU), array or sequence as a numpy array, without copying where possible."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def denormalize(images, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo ``(x - mean) / std`` of (C, H, W) or (N, C, H, W) images: float32 numpy, channels last, in [0, 1].
    ``mean``/``std``: one value per channel, or one for all (else numpy's broadcast ValueError)."""
    x = to_numpy(images).astype(np.float32, copy=False)
    m, s = (np.asarray(v, dtype=np.float32).reshape(-1, 1, 1) for v in (mean, std))
    return np.moveaxis(np.clip(x * s + m, 0.0, 1.0), -3, -1)


def to_display(images, mean=None, std=None) -> np.ndarray:
    """uint8 images (channels last or first) or normalized float (N, C, H, W) ones (need mean/std) -> float32
    (N, H, W, C) in [0, 1]; a single image gets a batch axis."""
    x = to_numpy(images)
    x = x[None] if x.ndim == 3 else x
    channels_last = x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
        return x if channels_last else np.moveaxis(x, 1, -1)
    if channels_last:
        # Float channels-last data is taken as already de-normalized (e.g. the output of denormalize).
        return np.clip(x.astype(np.float32), 0.0, 1.0)
    if mean is None or std is None:
        raise ConfigError("normalized (N, C, H, W) images need mean and std to be displayed")
    return denormalize(x, mean, std)


def imshow(ax, img: np.ndarray) -> None:
    """Show one (H, W, C) image in [0, 1] without axes; grayscale gets a gray colormap (RGB ignores it)."""
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set(xticks=[], yticks=[])
    ax.spines[:].set_visible(False)


def plot_text(text) -> str:
    """``text`` from a file (a class name, a phase) as matplotlib draws it literally: every ``$`` escaped, since two
    of them start mathtext (``a$b$c`` drawn in italics, ``$\\frac$`` a crash at save)."""
    return str(text).replace("$", r"\$")


def class_name(classes: Optional[Sequence[str]], label) -> str:
    """``classes[label]``, or the label itself when names are missing or the label is out of range, as
    :func:`plot_text` (for plots; tables take the names as they are)."""
    label = int(label)
    return plot_text(classes[label] if classes is not None and 0 <= label < len(classes) else label)


def image_grid(n: int, ncols: Optional[int], cell: Tuple[float, float], extra_height: float = 0.0):
    """``(fig, axes)``: ``n`` cells of ``cell`` inches, ``ncols`` wide (default: near-square, at most 8); the first
    ``n`` axes in row order, the unused ones hidden."""
    cols = max(1, min(int(ncols or min(8, math.ceil(math.sqrt(n)))), n))
    rows = math.ceil(n / cols)
    fig = new_figure((cell[0] * cols, cell[1] * rows + extra_height))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def true_pred_title(ax, classes: Optional[Sequence[str]], target, pred, suffix: str = "") -> None:
    """Title "true: X" over "pred: Y<suffix>", green when right, red when wrong (on one line, long CIFAR-100 names
    ran into the neighbouring titles)."""
    color = "darkgreen" if int(pred) == int(target) else "crimson"
    ax.set_title(f"true: {class_name(classes, target)}\npred: {class_name(classes, pred)}{suffix}", fontsize=8,
                 color=color)


def empty_figure(message: str, save: Optional[PathLike] = None) -> Figure:
    """A small figure that says why there is nothing to plot (better than an error in a report)."""
    fig, ax = axes_and_figure(None, (4, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11)
    return finish(fig, save)


def show_batch(images, targets, classes: Optional[Sequence[str]], mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None, preds=None, ncols: int = 8, max_images: int = 32,
               title: Optional[str] = None, save: Optional[PathLike] = None) -> Figure:
    """A grid of the first ``max_images`` images titled with their class names, or with "true: X" over "pred: Y"
    (green when right, red when wrong) given ``preds``.

    ``images`` are normalized float (N, 3, H, W) tensors (need mean/std) or uint8 (N, H, W, 3) arrays; ``targets``
    and ``preds`` labels (N,); ``classes`` names (None shows the numbers).
    """
    imgs = to_display(images, mean, std)
    n = min(len(imgs), int(max_images))
    if n == 0:
        return empty_figure("no images to show", save)
    row_height = 1.75 if preds is None else 2.0  # two-line titles need the room
    fig, axes = image_grid(n, ncols, (1.6, row_height), 0.4 if title else 0)
    for i, ax in enumerate(axes):
        imshow(ax, imgs[i])
        if preds is None:
            ax.set_title(class_name(classes, targets[i]), fontsize=9)
        else:
            true_pred_title(ax, classes, targets[i], preds[i])
    if title:
        fig.suptitle(title)
    return finish(fig, save)


def _augmented(transform: Callable, image: np.ndarray, mean, std) -> np.ndarray:
    """One transform output (normalized CHW tensor, albumentations dict, or HWC array) -> (H, W, C) in [0, 1]."""
    out = transform(image)
    out = out["image"] if isinstance(out, dict) else out  # a raw albumentations Compose returns {"image": ...}
    return to_display(out[0] if isinstance(out, (tuple, list)) else out, mean, std)[0]


def show_augmentations(dataset_images_uint8, transform: Callable, classes: Optional[Sequence[str]] = None,
                       mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None, n: int = 8,
                       repeats: int = 4, seed: int = 0, save: Optional[PathLike] = None, targets=None) -> Figure:
    """Before/after augmentation: ``n`` random images (rows), each followed by ``repeats`` augmented versions.

    Args:
        dataset_images_uint8: uint8 (N, H, W, 3) images, or a data set with ``.images`` (and ``.targets``).
        transform: uint8 HWC image -> normalized CHW tensor (mean, std undo it for display).
        seed: seeds the image choice and the augmentations; a transform with ``set_random_seed`` is seeded as a
            deep copy, and the global RNGs are restored afterwards, so the caller's random streams are untouched.
        targets: labels (N,) when a bare array is passed (row labels use ``classes``).
    """
    data = dataset_images_uint8
    targets = targets if targets is not None else getattr(data, "targets", None)
    classes = classes if classes is not None else getattr(data, "classes", None)
    images = to_numpy(getattr(data, "images", data))
    if len(images) == 0:
        return empty_figure("no images to show", save)
    idx = np.sort(np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False))
    if hasattr(transform, "set_random_seed"):  # seed a copy: the caller's transform keeps its own stream
        transform = copy.deepcopy(transform)
        transform.set_random_seed(seed)
    rng_state = get_rng_state()
    try:
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        rows = [[images[i].astype(np.float32) / 255.0] + [_augmented(transform, images[i], mean, std)
                                                          for _ in range(repeats)] for i in idx]
    finally:
        set_rng_state(rng_state)

    cols = 1 + repeats
    fig, axes = image_grid(len(rows) * cols, cols, (1.6, 1.6), 0.3)  # one row per image, in row order
    for ax, img in zip(axes, [img for row in rows for img in row]):
        imshow(ax, img)
    for r, i in enumerate(idx):
        axes[r * cols].set_ylabel(f"#{i}" if targets is None else class_name(classes, to_numpy(targets)[i]), fontsize=9)
    for c, ax in enumerate(axes[:cols]):
        ax.set_title(f"augmented {c}" if c else "original", fontsize=9)
    fig.suptitle("before and after augmentation")
    return finish(fig, save)
