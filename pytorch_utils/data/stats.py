"""Per-channel dataset statistics (mean/std on the [0, 1] scale) for normalization, and the one check of image arrays
handed to the package (``ArrayDataset``, ``compute_mean_std``)."""
import math
from typing import Tuple

import numpy as np

from pytorch_utils.errors import DatasetError

Stats = Tuple[float, float, float]
CHUNK_PIXELS = 1 << 22  # pixels summed at a time by compute_mean_std


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
    exact integer sums of the pixels and their squares over chunks of at most ``batch`` images and ``CHUNK_PIXELS``
    pixels (rows of one image for larger images): at most ~9 bytes x ``CHUNK_PIXELS`` (38 MB) of extra memory.
    """
    images = getattr(data, "images", data)
    images = images[None] if getattr(images, "ndim", 0) == 3 else images  # a single HWC image
    check_images(images, "compute_mean_std", min_n=1)
    h, w = images.shape[1:3]
    step, rows = max(1, min(int(batch), CHUNK_PIXELS // (h * w))), max(1, min(h, CHUNK_PIXELS // w))
    total, squares = np.zeros(3, np.int64), np.zeros(3, np.int64)  # exact to 10^14 pixels
    for start, top in ((s, t) for s in range(0, len(images), step) for t in range(0, h, rows)):
        chunk = images[start:start + step, top:top + rows].reshape(-1, 3)
        total += chunk.sum(axis=0, dtype=np.int64)
        squares += np.square(chunk, dtype=np.uint16).sum(axis=0, dtype=np.int64)  # 255^2 fits 16 bits
    n = images.size // 3
    # Python integers: n * sum(x^2) - sum(x)^2 = n^2 var exactly; one division by 255 at the end for the [0, 1] scale.
    var = [(n * int(q) - int(t) ** 2) / n ** 2 for t, q in zip(total, squares)]
    return tuple(int(t) / n / 255.0 for t in total), tuple(math.sqrt(v) / 255.0 for v in var)
