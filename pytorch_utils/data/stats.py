"""Per-channel dataset statistics (mean/std on the [0, 1] scale) for normalization, and the one check of image arrays
handed to the package (``ArrayDataset``, ``compute_mean_std``)."""
import math
from typing import Tuple

import numpy as np

from pytorch_utils.errors import DatasetError

Stats = Tuple[float, float, float]


def check_images(images, who: str, min_n: int = 0) -> None:
    """DatasetError naming ``who`` unless ``images`` is a uint8 numpy array (N >= ``min_n``, H, W, 3) of RGB images."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 \
            or len(images) < min_n:
        got = f"dtype {images.dtype}, shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DatasetError(f"{who} needs a uint8 numpy array of shape (N{' >= 1' if min_n else ''}, H, W, 3) (RGB, "
                           f"channels last), got {got}; convert floats in [0, 1] with (x * 255).round().astype("
                           "np.uint8) and grayscale/RGBA images to RGB first (e.g. PIL's Image.convert('RGB'))")


def compute_mean_std(data, batch: int = 2048) -> Tuple[Stats, Stats]:
    """Per-channel ``(mean, std)`` (3 floats each, [0, 1] scale) over all pixels of uint8 (N, H, W, 3) images, one
    (H, W, 3) image, or an ``ArrayDataset``; DatasetError for a wrong dtype/shape or no images.

    The population std over the whole data set (what ``Normalize`` needs), = ``images.reshape(-1, 3).std(0) / 255``:
    exact integer sums of the pixels and their squares, ``batch`` images at a time (no float copy of all images).
    """
    images = getattr(data, "images", data)
    images = images[None] if getattr(images, "ndim", 0) == 3 else images  # a single HWC image
    check_images(images, "compute_mean_std", min_n=1)
    batch, total, squares = max(1, int(batch)), np.zeros(3, np.int64), np.zeros(3, np.int64)  # exact to 10^14 pixels
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch].reshape(-1, 3).astype(np.int64)
        total += chunk.sum(axis=0)
        squares += (chunk * chunk).sum(axis=0)
    n = images.size // 3
    # Python integers: n * sum(x^2) - sum(x)^2 = n^2 var exactly; one division by 255 at the end for the [0, 1] scale.
    var = [(n * int(q) - int(t) ** 2) / n ** 2 for t, q in zip(total, squares)]
    return tuple(int(t) / n / 255.0 for t in total), tuple(math.sqrt(v) / 255.0 for v in var)
