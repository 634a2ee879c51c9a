"""The package's one in-memory data set type, ``ArrayDataset`` (every source is decoded into it), and the
class-stratified subset choice."""
import os
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from pytorch_utils.data.stats import compute_mean_std
from pytorch_utils.errors import ConfigError, DatasetError

PathLike = Union[str, os.PathLike]


def as_stats(value, what: str, error=DatasetError) -> Optional[Tuple[float, float, float]]:
    """``value`` as a tuple of 3 per-channel floats (None stays None); raises ``error`` naming ``what`` otherwise."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise error(f"{what} must be 3 per-channel floats on the [0, 1] scale, got {value!r}") from None
    if len(out) != 3:
        raise error(f"{what} must be 3 per-channel floats on the [0, 1] scale, got {len(out)} values")
    return out


def stratified_indices(targets: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` sorted int64 indices into int ``targets`` (N,) (all if n >= N), drawn by ``seed`` within each class in
    proportion to its frequency (largest-remainder rounding). ConfigError: ``n < 1``."""
    targets = np.asarray(targets)
    if int(n) != n or n < 1:
        raise ConfigError(f"limit must be a positive integer, got {n!r}")
    total = len(targets)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    classes, counts = np.unique(targets, return_counts=True)
    quota = counts * (n / total)
    take = np.floor(quota).astype(np.int64)
    # Hand the leftover slots to the classes with the largest fractional parts (ties: lower label first).
    leftover = n - int(take.sum())
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:leftover]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(targets == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


class ArrayDataset(Dataset):
    """In-memory images: uint8 (N, H, W, 3) RGB ``images``, int ``targets`` (N,) (stored as int64), label ``i`` naming
    ``classes[i]``. ``transform`` maps one HWC uint8 image (None: a [0, 1] float CHW tensor); ``mean``/``std``: [0, 1]
    scale, computed from the images on first use when not given. DatasetError: wrong dtype/shape, length mismatch,
    or a label out of range."""

    def __init__(self, images: np.ndarray, targets, classes: Sequence[str], transform: Optional[Callable] = None,
                 mean=None, std=None):
        if not isinstance(images, np.ndarray):
            raise DatasetError(f"images must be a uint8 numpy array (N, H, W, 3), got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise DatasetError(
                f"images must have dtype uint8 (0-255 pixel values), got {images.dtype}; "
                "convert with (x * 255).round().astype(np.uint8) if they are floats in [0, 1]"
            )
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DatasetError(
                f"images must have shape (N, H, W, 3) (RGB, channels last), got shape {images.shape}; "
                "convert grayscale/RGBA images to RGB first (e.g. PIL's Image.convert('RGB'))"
            )
        targets = np.asarray(targets)
        if targets.ndim != 1:
            raise DatasetError(f"targets must be a 1-D array of labels, got shape {targets.shape}")
        if targets.size and not np.issubdtype(targets.dtype, np.integer):
            raise DatasetError(f"targets must be integer class labels, got dtype {targets.dtype}")
        targets = targets.astype(np.int64, copy=False)
        if len(images) != len(targets):
            raise DatasetError(f"got {len(images)} images but {len(targets)} targets; they must match one to one")
        classes = tuple(str(c) for c in classes)
        if not classes:
            raise DatasetError("classes is empty; pass the class names, label i naming classes[i]")
        bad = targets[(targets < 0) | (targets >= len(classes))]
        if bad.size:
            raise DatasetError(
                f"label {int(bad[0])} is out of range for num_classes={len(classes)} "
                f"(labels must be in [0, {len(classes) - 1}]); check the labels or the class list"
            )
        self.images = images
        self.targets = targets
        self.classes = classes
        self.transform = transform
        self._mean = as_stats(mean, "mean")
        self._std = as_stats(std, "std")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index) -> Tuple[torch.Tensor, int]:
        image = self.images[int(index)]
        target = int(self.targets[int(index)])
        if self.transform is not None:
            return self.transform(image), target
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0), target

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> Tuple[int, int]:
        """(H, W) of the images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def mean(self) -> Tuple[float, float, float]:
        if self._mean is None:
            self._mean, self._std = compute_mean_std(self.images)
        return self._mean

    @mean.setter
    def mean(self, value) -> None:
        self._mean = as_stats(value, "mean")

    @property
    def std(self) -> Tuple[float, float, float]:
        if self._std is None:
            self._mean, self._std = compute_mean_std(self.images)
        return self._std

    @std.setter
    def std(self, value) -> None:
        self._std = as_stats(value, "std")

    def subset(self, indices) -> "ArrayDataset":
        """A new ArrayDataset holding ``indices`` (same classes, transform, mean and std as this one)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise DatasetError(f"subset indices must be in [0, {len(self)}), got range "
                               f"[{int(indices.min())}, {int(indices.max())}]")
        return ArrayDataset(self.images[indices], self.targets[indices], self.classes, self.transform,
                            self.mean, self.std)

    def limit(self, n: int, seed: int = 0) -> "ArrayDataset":
        """A class-stratified, seeded subset of ``n`` items (all items when ``n >= len(self)``)."""
        return self.subset(stratified_indices(self.targets, n, seed))

    def class_counts(self) -> np.ndarray:
        """Items per class, shape (num_classes,)."""
        return np.bincount(self.targets, minlength=self.num_classes)

    @property
    def empty_classes(self) -> Tuple[str, ...]:
        """Names of the classes with no item here (their per-class accuracy is undefined)."""
        return tuple(c for c, n in zip(self.classes, self.class_counts()) if n == 0)

    def __repr__(self) -> str:
        return (f"ArrayDataset(n={len(self)}, image_size={self.image_size}, num_classes={self.num_classes}, "
                f"transform={self.transform!r})")

