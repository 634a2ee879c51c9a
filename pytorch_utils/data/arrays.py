"""The package's one in-memory data set type, ``ArrayDataset`` (every source is decoded into it), and the
class-stratified subset choice."""
import math
import os
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from pytorch_utils.data.stats import Stats, check_images, compute_mean_std
from pytorch_utils.errors import ConfigError, DatasetError

PathLike = Union[str, os.PathLike]


def as_stats(value, what: str, error=DatasetError, positive: bool = False) -> Optional[Stats]:
    """``value`` as 3 finite per-channel floats on the [0, 1] scale, all > 0 when ``positive`` (a std to divide by;
    a data set's may be 0); None stays None. Raises ``error`` naming ``what`` otherwise (0-255 values included)."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) and v <= 1.5 and (v > 0 or not positive) for v in out):
        raise error(f"{what} must be 3 per-channel floats on the [0, 1] scale (not 0-255)"
                    f"{', all > 0' if positive else ''}, got {value!r}; use ds.mean/ds.std or compute_mean_std")
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
    take[np.argsort(-(quota - take), kind="stable")[:n - int(take.sum())]] += 1
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
        check_images(images, "ArrayDataset")
        targets = np.asarray(targets)
        if targets.shape != (len(images),) or (targets.size and not np.issubdtype(targets.dtype, np.integer)):
            raise DatasetError(f"got {len(images)} images but {targets.size} targets of dtype {targets.dtype}, shape "
                               f"{targets.shape}; pass one integer class label per image (a 1-D array)")
        classes = tuple(str(c) for c in classes)
        bad = targets[(targets < 0) | (targets >= len(classes))]
        if bad.size:
            raise DatasetError(f"label {int(bad[0])} is out of range for num_classes={len(classes)} (labels must be "
                               f"in [0, {len(classes) - 1}]); check the labels or the class list")
        self.images, self.targets = images, targets.astype(np.int64, copy=False)
        self.classes, self.transform = classes, transform
        self._mean, self._std = as_stats(mean, "mean"), as_stats(std, "std")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index) -> Tuple[torch.Tensor, int]:
        image, target = self.images[int(index)], int(self.targets[int(index)])
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

    def _stats(self) -> Tuple[Stats, Stats]:
        """(mean, std) as given or set; a missing one is computed from the images on first use."""
        if self._mean is None or self._std is None:
            mean, std = compute_mean_std(self.images)
            self._mean, self._std = self._mean or mean, self._std or std
        return self._mean, self._std

    mean = property(lambda self: self._stats()[0], lambda self, value: setattr(self, "_mean", as_stats(value, "mean")),
                    doc="Per-channel mean on the [0, 1] scale (settable; computed from the images when not given).")
    std = property(lambda self: self._stats()[1], lambda self, value: setattr(self, "_std", as_stats(value, "std")),
                   doc="Per-channel std on the [0, 1] scale (settable; computed from the images when not given).")

    def subset(self, indices) -> "ArrayDataset":
        """A new ArrayDataset holding ``indices`` (same classes, transform, mean and std as this one)."""
        indices = np.asarray(indices, dtype=np.int64)
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
