"""Per-channel dataset statistics (mean/std on the [0, 1] scale) for normalization."""
from typing import Tuple

import numpy as np

from pytorch_utils.errors import DatasetError

Stats = Tuple[float, float, float]


def compute_mean_std(data, batch: int = 2048) -> Tuple[Stats, Stats]:
    """Per-channel ``(mean, std)`` (3 floats each, [0, 1] scale) over all pixels of uint8 (N, H, W, 3) images, one
    (H, W, 3) image, or an ``ArrayDataset``; DatasetError for a wrong dtype/shape or no images.

    The population std over the whole data set (what ``Normalize`` needs), = ``images.reshape(-1, 3).std(0) / 255``:
    chunks of ``batch`` images are merged with Chan's parallel update in float64 (no float copy of all images).
    """
    images = getattr(data, "images", data)
    if not isinstance(images, np.ndarray):
        raise DatasetError(
            f"compute_mean_std expects a uint8 numpy array (N, H, W, 3) or an ArrayDataset, got {type(data).__name__}"
        )
    if images.ndim == 3:  # a single HWC image
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(
            f"compute_mean_std expects uint8 images of shape (N, H, W, 3), got dtype {images.dtype} and shape "
            f"{images.shape}; convert with (x * 255).round().astype(np.uint8) if your images are floats in [0, 1]"
        )
    if images.shape[0] == 0:
        raise DatasetError("compute_mean_std got an empty image array (N = 0); there is nothing to measure")
    batch = max(1, int(batch))
    count = 0
    mean = np.zeros(3, dtype=np.float64)
    m2 = np.zeros(3, dtype=np.float64)  # sum of squared deviations from the running mean
    for start in range(0, images.shape[0], batch):
        chunk = images[start:start + batch].reshape(-1, 3).astype(np.float64)
        n_b = chunk.shape[0]
        mean_b = chunk.mean(axis=0)
        m2_b = ((chunk - mean_b) ** 2).sum(axis=0)
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
        count = total
    std = np.sqrt(m2 / count)
    # One division by 255 at the very end: pixel statistics -> [0, 1] scale.
    return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in std / 255.0)
