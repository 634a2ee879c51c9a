import numpy as np
import pytest

from pytorch_utils.data import ArrayDataset, compute_mean_std
from pytorch_utils.errors import DatasetError


def test_matches_numpy_over_all_pixels_across_chunks():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    flat = images.reshape(-1, 3).astype(np.float64)
    # batch=7 does not divide 50: exercises the merging of unequal chunks
    mean, std = compute_mean_std(images, batch=7)
    np.testing.assert_allclose(mean, flat.mean(0) / 255, rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, flat.std(0) / 255, rtol=0, atol=1e-12)
    assert all(isinstance(v, float) for v in mean + std) and len(mean) == len(std) == 3


def test_constant_images_have_zero_std():
    images = np.full((5, 4, 4, 3), (10, 128, 255), dtype=np.uint8)
    mean, std = compute_mean_std(images)
    np.testing.assert_allclose(mean, (10 / 255, 128 / 255, 1.0), atol=1e-12)
    assert std == (0.0, 0.0, 0.0)


def test_std_is_over_all_pixels_not_mean_of_per_image_stds():
    # each image is constant (per-image std 0) but the data set spans 0..255: global std is 127.5/255 = 0.5
    images = np.stack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)])
    mean, std = compute_mean_std(images, batch=1)
    np.testing.assert_allclose(mean, (0.5,) * 3, atol=1e-12)
    np.testing.assert_allclose(std, (0.5,) * 3, atol=1e-12)


def test_accepts_array_dataset_and_single_image():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)
    ds = ArrayDataset(images, np.zeros(6, np.int64), ("a",))
    assert compute_mean_std(ds) == compute_mean_std(images)
    one_mean, _ = compute_mean_std(images[0])
    np.testing.assert_allclose(one_mean, images[0].reshape(-1, 3).mean(0) / 255, atol=1e-12)


@pytest.mark.parametrize("bad", [np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4), np.uint8),
                                 np.zeros((0, 4, 4, 3), np.uint8), [[1, 2, 3]]])
def test_rejects_bad_input(bad):
    with pytest.raises(DatasetError):
        compute_mean_std(bad)
