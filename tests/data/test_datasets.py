import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pytorch_utils.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, ArrayDataset, compute_mean_std, load_datasets
from pytorch_utils.data.cifar import load_cifar
from pytorch_utils.data.folders import load_image_folder
from pytorch_utils.data.synthetic import make_synthetic
from pytorch_utils.errors import ConfigError, DatasetError, DatasetNotFoundError, UnknownNameError

REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR_ZIP = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
needs_zip = pytest.mark.skipif(not CIFAR_ZIP.exists(), reason=f"{CIFAR_ZIP} not present")


def rgb(n=6, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ ArrayDataset


def test_array_dataset_items_and_properties():
    images = rgb()
    ds = ArrayDataset(images, [0, 1, 2, 0, 1, 2], ("a", "b", "c"))
    x, y = ds[4]
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8) and isinstance(y, int) and y == 1
    assert torch.allclose(x, torch.from_numpy(images[4].transpose(2, 0, 1).astype(np.float32)) / 255)
    assert len(ds) == 6 and ds.num_classes == 3 and ds.targets.dtype == np.int64
    # mean/std computed from the images when not given
    assert ds.mean == compute_mean_std(images)[0] and ds.std == compute_mean_std(images)[1]
    ds.transform = lambda im: torch.zeros(1)  # the transform is a swappable attribute
    assert torch.equal(ds[0][0], torch.zeros(1))


@pytest.mark.parametrize("images,match", [
    (rgb().astype(np.float32), "uint8"),
    (rgb()[..., 0], r"\(6, 8, 8\)"),  # grayscale
    (np.zeros((6, 8, 8, 4), np.uint8), r"\(6, 8, 8, 4\)"),  # RGBA
])
def test_array_dataset_rejects_bad_images(images, match):
    with pytest.raises(DatasetError, match=match):
        ArrayDataset(images, np.zeros(6, np.int64), ("a",))


def test_array_dataset_rejects_bad_labels():
    with pytest.raises(DatasetError, match="5 images but 6 targets"):
        ArrayDataset(rgb(5), np.zeros(6, np.int64), ("a",))
    with pytest.raises(DatasetError) as err:
        ArrayDataset(rgb(), [0, 1, 10, 0, 0, 0], tuple("abcdefghij"))
    assert "label 10" in str(err.value) and "num_classes=10" in str(err.value)
    with pytest.raises(DatasetError, match="label -1"):
        ArrayDataset(rgb(), [0, -1, 0, 0, 0, 0], ("a", "b"))
    with pytest.raises(ValueError):  # DatasetError is a ValueError
        ArrayDataset(rgb(), [0.5] * 6, ("a", "b"))


def test_subset_and_stratified_seeded_limit():
    ds = make_synthetic(200, num_classes=4, seed=1)
    small = ds.limit(40, seed=3)
    assert len(small) == 40 and np.bincount(small.targets).tolist() == [10, 10, 10, 10]
    assert np.array_equal(small.images, ds.limit(40, seed=3).images)
    assert not np.array_equal(small.images, ds.limit(40, seed=4).images)
    assert small.mean == ds.mean and small.classes == ds.classes  # a subset keeps the parent's stats
    sub = ds.subset([5, 2])
    assert np.array_equal(sub.images, ds.images[[5, 2]]) and sub.targets.tolist() == ds.targets[[5, 2]].tolist()
    assert len(ds.limit(10_000)) == 200
    with pytest.raises(ConfigError):
        ds.limit(0)


# ------------------------------------------------------------------------------------------------ CIFAR


def test_load_cifar_without_files_says_to_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        load_cifar("cifar10", root=tmp_path, download=False)
    with pytest.raises(UnknownNameError, match="cifar100"):  # the door lists the names
        load_datasets("cifar11", root=tmp_path)


# ------------------------------------------------------------------------------------------------ the JPEG zip


@needs_zip
def test_zip_subset_is_stratified_cifar10():
    start = time.perf_counter()
    ds = load_image_folder(CIFAR_ZIP, "train", limit=300, seed=0)
    assert time.perf_counter() - start < 20  # decodes only the 300 chosen images (generous bound for slow CI)
    assert ds.images.shape == (300, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.classes == CIFAR10_CLASSES
    assert ds.targets.min() >= 0 and ds.targets.max() < 10
    assert np.bincount(ds.targets, minlength=10).tolist() == [30] * 10
    assert (ds.mean, ds.std) == (CIFAR10_MEAN, CIFAR10_STD)
    # real photos, not blank arrays: channel means near the CIFAR-10 means
    np.testing.assert_allclose(compute_mean_std(ds)[0], CIFAR10_MEAN, atol=0.06)
    # cached: the same seed/limit returns the same decoded array without decoding again
    assert load_image_folder(CIFAR_ZIP, "train", limit=300, seed=0).images is ds.images
    other = load_image_folder(CIFAR_ZIP, "train", limit=300, seed=1)
    assert not np.array_equal(other.images, ds.images)


@needs_zip
def test_load_datasets_from_the_zip_with_limits():
    train, test = load_datasets(str(CIFAR_ZIP), train_limit=200, test_limit=100, seed=0)
    assert len(train) == 200 and len(test) == 100
    assert train.classes == test.classes == CIFAR10_CLASSES
    assert np.bincount(test.targets).tolist() == [10] * 10
    assert test.mean == train.mean and test.std == train.std
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    with pytest.raises(ConfigError, match="10 classes"):
        load_datasets(str(CIFAR_ZIP), train_limit=20, test_limit=20, num_classes=100)


# ------------------------------------------------------------------------------------------------ image folders


def write_tree(root: Path, sizes=None, ext=".png"):
    """train/test folders with 3 images of classes 'dog' and 'cat' (created in non-sorted order)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "test"):
        for cname in ("dog", "cat"):
            (root / split / cname).mkdir(parents=True)
            for i in range(3):
                arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                name = root / split / cname / f"{i:03d}{ext if i else '.jpg'}"
                Image.fromarray(arr).save(name)
                arrays[(split, cname, i)] = arr
    (root / "train" / "cat" / "notes.txt").write_text("ignored")
    return arrays


def test_folder_tree_loads_sorted_classes_and_exact_png_pixels(tmp_path):
    arrays = write_tree(tmp_path)
    ds = load_image_folder(tmp_path, "train")
    assert ds.classes == ("cat", "dog") and ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images.shape == (6, 8, 8, 3)
    # files are read in name order: 000.jpg (lossy), 001.png, 002.png
    assert np.array_equal(ds.images[1], arrays[("train", "cat", 1)])
    assert np.array_equal(ds.images[5], arrays[("train", "dog", 2)])
    assert np.array_equal(ds.images[0], np.asarray(Image.open(tmp_path / "train" / "cat" / "000.jpg")))  # the jpg
    assert (ds.mean, ds.std) == compute_mean_std(ds.images)  # not CIFAR-10 classes: computed
    test = load_image_folder(tmp_path, "test", classes=("cat", "dog", "zebra"))
    assert test.num_classes == 3 and len(test) == 6


def test_zip_with_a_wrapping_folder_matches_the_folder(tmp_path):
    write_tree(tmp_path / "tree" / "mydata")
    archive = tmp_path / "mydata.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "tree").rglob("*")):
            zf.write(f, f.relative_to(tmp_path / "tree").as_posix())
    from_zip = load_image_folder(archive, "train")
    from_dir = load_image_folder(tmp_path / "tree" / "mydata", "train")
    assert from_zip.classes == from_dir.classes and np.array_equal(from_zip.images, from_dir.images)
    assert np.array_equal(from_zip.targets, from_dir.targets)
    limited = load_image_folder(archive, "test", limit=2, seed=0)
    assert limited.targets.tolist() == [0, 1]


def test_missing_path_and_missing_split(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "nope.zip", "train")
    (tmp_path / "training" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        load_image_folder(tmp_path, "train")
    assert "train/<class>/" in str(err.value) and "training" in str(err.value)


def test_empty_split_and_classes_without_images(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_image_folder(tmp_path, "train")
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_image_folder(tmp_path, "train")


def test_mixed_sizes_name_both_files(tmp_path):
    write_tree(tmp_path)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "train" / "dog" / "big.png")
    with pytest.raises(DatasetError) as err:
        load_image_folder(tmp_path, "train")
    msg = str(err.value)
    assert "big.png" in msg and "12x10" in msg and "000.jpg" in msg and "8x8" in msg


def test_grayscale_image_is_converted_to_rgb_not_refused(tmp_path):
    # Was an error naming the file and mode; grayscale now loads as RGB (see tests/data/test_folders.py).
    write_tree(tmp_path)
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "train" / "dog" / "gray.png")
    ds = load_image_folder(tmp_path, "train")
    assert ds.images.shape[1:] == (8, 8, 3) and (ds.images == 77).all(axis=(1, 2, 3)).sum() == 1


def test_a_folder_of_one_class_is_refused_at_load(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "a" / "0.png")
    with pytest.raises(DatasetError) as err:  # it would train, and report a test accuracy of 100%
        load_datasets(str(tmp_path))
    assert str(err.value) == f"{tmp_path}/train: found 1 class ('a'); a classifier needs at least 2 class folders"


def test_labels_are_checked_where_a_data_set_is_loaded(tmp_path, monkeypatch):
    import torchvision

    write_tree(tmp_path)
    for data in ("synthetic", str(tmp_path)):
        train, test = load_datasets(data, train_limit=6, test_limit=4)
        assert test.classes == train.classes
        assert 0 <= min(train.targets.min(), test.targets.min()) and max(train.targets.max(), test.targets.max()) \
            < train.num_classes

    class BadLabels:  # torchvision's CIFAR-10 as it would load a damaged copy
        def __init__(self, root, train, download):
            self.data, self.targets = rgb(4, 32), [0, 1, 10, 2]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", BadLabels)
    with pytest.raises(DatasetError, match=r"label 10 is out of range for num_classes=10 .*\[0, 9\]"):
        load_datasets("cifar10")


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_and_class_dependent():
    a, b = make_synthetic(300, seed=0), make_synthetic(300, seed=0)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.images, make_synthetic(300, seed=1).images)
    assert a.classes == tuple(f"class_{i}" for i in range(10)) and np.bincount(a.targets).tolist() == [30] * 10
    assert (a.mean, a.std) == compute_mean_std(a.images)
    # nearest class mean on raw pixels, fitted on one draw and scored on another: chance is 10 %
    test = make_synthetic(300, seed=2)
    x, xt = a.images.reshape(300, -1).astype(np.float32), test.images.reshape(300, -1).astype(np.float32)
    means = np.stack([x[a.targets == c].mean(0) for c in range(10)])
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == test.targets).mean() > 0.6


def test_load_datasets_synthetic_and_unknown_names():
    train, test = load_datasets("synthetic", train_limit=120, test_limit=60, num_classes=4, seed=0)
    assert len(train) == 120 and len(test) == 60 and train.num_classes == test.num_classes == 4
    assert test.mean == train.mean and test.std == train.std
    assert not np.array_equal(train.images[:60], test.images)  # test images are fresh draws
    full_train, full_test = load_datasets("synthetic")
    assert (len(full_train), len(full_test)) == (2000, 500)
    with pytest.raises(UnknownNameError) as err:
        load_datasets("imagenet")
    assert all(n in str(err.value) for n in ("synthetic", "cifar10", "cifar100"))
    with pytest.raises(DatasetNotFoundError):
        load_datasets("./no/such/folder")


# ------------------------------------------------------------------------------------------------ review fixes


@pytest.mark.parametrize("payload", [b"garbage bytes, not a jpeg", "truncated"])
def test_corrupt_image_in_folder_names_the_file(tmp_path, payload):
    write_tree(tmp_path)
    bad = tmp_path / "train" / "dog" / "001.png"
    if payload == "truncated":  # a real PNG cut short: opens fine, fails when the pixels are read
        payload = bad.read_bytes()[:60]
    bad.write_bytes(payload)
    with pytest.raises(DatasetError) as err:
        load_image_folder(tmp_path, "train")
    msg = str(err.value)
    assert str(bad) in msg and "remove" in msg and "replace" in msg


def test_corrupt_zip_member_names_the_member(tmp_path):
    write_tree(tmp_path / "tree")
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "tree").rglob("*")):
            zf.write(f, f.relative_to(tmp_path / "tree").as_posix())
        zf.writestr("train/cat/1.jpg", b"\x00garbage")
    with pytest.raises(DatasetError) as err:
        load_image_folder(archive, "train")
    assert f"{archive}!train/cat/1.jpg" in str(err.value) and "remove" in str(err.value)


def test_mixed_size_error_names_the_file_in_a_zip(tmp_path):
    for name, arr in (("big", np.zeros((9, 8, 3), np.uint8)),):
        write_tree(tmp_path / name)
        Image.fromarray(arr).save(tmp_path / name / "train" / "dog" / f"{name}.png")
        archive = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for f in sorted((tmp_path / name).rglob("*")):
                zf.write(f, f.relative_to(tmp_path / name).as_posix())
        with pytest.raises(DatasetError) as err:
            load_image_folder(archive, "train")
        assert f"{archive}!train/dog/{name}.png" in str(err.value)


def write_cifar_named_tree(root: Path):
    for split in ("train", "test"):
        for i, cname in enumerate(CIFAR10_CLASSES):
            (root / split / cname).mkdir(parents=True)
            Image.fromarray(np.full((4, 4, 3), 20 * i, np.uint8)).save(root / split / cname / "0.png")


def test_cifar10_class_names_get_cifar10_stats_unless_compute_is_asked(tmp_path):
    write_cifar_named_tree(tmp_path)
    auto = load_image_folder(tmp_path, "train")
    assert (auto.mean, auto.std) == (CIFAR10_MEAN, CIFAR10_STD)
    computed = load_image_folder(tmp_path, "train", stats="compute")
    assert (computed.mean, computed.std) == compute_mean_std(computed.images)
    assert computed.mean != CIFAR10_MEAN
    train, test = load_datasets(str(tmp_path), stats="compute")
    assert train.mean == computed.mean and test.mean == computed.mean
    with pytest.raises(ConfigError, match="'compute'"):  # checked at the door
        load_datasets(str(tmp_path), stats="cifar")


@pytest.mark.parametrize("kwargs,expected", [
    ({"train_limit": 0}, ">= 1, got 0"),
    ({"test_limit": 0}, ">= 1, got 0"),
    ({"train_limit": -5}, ">= 1, got -5"),
    ({"test_limit": 2.5}, "int or None, got 2.5"),
    ({"num_classes": 0}, ">= 2, got 0"),
    ({"num_classes": 1}, ">= 2, got 1"),
    ({"max_side": 0}, ">= 1, got 0"),
    ({"max_total_pixels": 0}, ">= 1, got 0"),
    ({"stats": "cifar"}, "one of 'auto', 'compute'"),
])
def test_load_datasets_rejects_bad_limits_and_class_counts(tmp_path, kwargs, expected):
    write_tree(tmp_path)
    name = next(iter(kwargs))
    for data in ("synthetic", str(tmp_path)):  # checked the same way for every source, before any loading
        with pytest.raises(ConfigError) as err:
            load_datasets(data, **kwargs)
        msg = str(err.value)
        assert f"load_datasets argument {name!r}" in msg  # the library names its argument
        assert all(part in msg for part in expected.split(", "))  # synthetic sizes: also "and <= 200000"
        assert "make_synthetic" not in msg


def test_huge_synthetic_size_fails_fast():
    start = time.perf_counter()
    for kwargs in ({"test_limit": 999_999}, {"train_limit": 200_001}):
        with pytest.raises(ConfigError) as err:
            load_datasets("synthetic", **kwargs)
        assert "200000" in str(err.value) and next(iter(kwargs)) in str(err.value)
    with pytest.raises(ConfigError, match="200,000"):
        make_synthetic(10**6)
    assert time.perf_counter() - start < 2  # nothing was generated


def test_synthetic_limit_of_one_is_honoured():
    train, test = load_datasets("synthetic", train_limit=2, test_limit=1, num_classes=2)
    assert (len(train), len(test)) == (2, 1)


def test_stats_are_checked_where_they_are_given_and_a_constant_set_keeps_its_zero_std():
    constant = ArrayDataset(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, np.int64), ("a",))
    assert constant.std == (0.0, 0.0, 0.0)  # a data set may have no spread; only a transform divides by it
    with pytest.raises(DatasetError, match="0-255"):
        ArrayDataset(rgb(), np.zeros(6, np.int64), ("a",), mean=(125, 123, 114))
    with pytest.raises(DatasetError, match="3 per-channel"):
        constant.std = (0.2, 0.2)
