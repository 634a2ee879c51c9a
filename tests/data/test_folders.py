"""Image folders and zips as students bring them: any Pillow format, non-RGB modes, zip name encodings, splits."""
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytorch_utils.data import folders, load_datasets
from pytorch_utils.data.folders import load_image_folder
from pytorch_utils.errors import DatasetError


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def rgb_image(value: int, size: int = 8) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), value, np.uint8))


def two_class_tree(root: Path, size: int = 8) -> None:
    for split in ("train", "test"):
        for label, cname in enumerate(("a", "b")):
            save(root / split / cname / "0.png", rgb_image(40 + 100 * label, size))


def test_every_pillow_format_in_any_letter_case_is_read(tmp_path):
    names = ["0.JPG", "1.PNG", "2.jpeg", "3.bmp", "4.gif", "5.tif", "6.TIFF"]
    for i, name in enumerate(names):
        save(tmp_path / "train" / "mixed" / name, rgb_image(10 * i))
    for i in range(2):  # a class whose images are all .webp was silently empty before
        save(tmp_path / "train" / "webp_only" / f"{i}.webp", Image.new("RGB", (8, 8), (200, 0, 0)))
    ds = load_image_folder(tmp_path, "train")
    assert ds.classes == ("mixed", "webp_only")
    assert ds.class_counts().tolist() == [len(names), 2]
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"} <= folders.image_extensions()


def test_undecodable_image_is_named(tmp_path):
    two_class_tree(tmp_path)
    bad = tmp_path / "train" / "a" / "broken.WEBP"
    bad.write_bytes(b"RIFF not really a webp")
    with pytest.raises(DatasetError, match="broken.WEBP"):
        load_image_folder(tmp_path, "train")


def test_training_class_without_usable_images_is_named(tmp_path):
    two_class_tree(tmp_path)
    (tmp_path / "train" / "empty_cls").mkdir()
    (tmp_path / "train" / "empty_cls" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"\['empty_cls'\]"):
        load_datasets(str(tmp_path))


def test_class_without_test_images_warns_and_is_listed(tmp_path, caplog):
    two_class_tree(tmp_path)
    save(tmp_path / "train" / "c" / "0.png", rgb_image(3))
    with caplog.at_level(logging.WARNING, logger="pytorch_utils.data.folders"):
        train, test = load_datasets(str(tmp_path))
    assert train.classes == test.classes == ("a", "b", "c")
    assert test.empty_classes == ("c",) and train.empty_classes == ()
    assert any("['c']" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_test_class_that_training_lacks_says_so(tmp_path):
    two_class_tree(tmp_path)
    save(tmp_path / "test" / "zebra" / "0.png", rgb_image(3))
    with pytest.raises(DatasetError, match=r"training lacks the class\(es\) \['zebra'\]"):
        load_datasets(str(tmp_path))


def test_non_rgb_modes_convert_to_rgb_with_one_log_line(tmp_path, caplog):
    d = tmp_path / "train" / "x"
    save(d / "gray.png", Image.fromarray(np.full((4, 4), 90, np.uint8)))
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    save(d / "palette.png", palette)
    save(d / "rgba.png", Image.new("RGBA", (4, 4), (50, 60, 70, 0)))
    # 16-bit grayscale: 65535 is white, 32896 (= 128 * 257) mid-grey; a plain convert("RGB") would clip to 255.
    sixteen = np.array([[0, 32896], [65535, 257]] * 2, np.uint16).repeat(2, axis=1)
    save(d / "sixteen.png", Image.fromarray(sixteen))
    save(d / "rgb.png", rgb_image(5, 4))
    with caplog.at_level(logging.INFO, logger="pytorch_utils.data.folders"):
        ds = load_image_folder(tmp_path, "train")
    by_name = dict(zip(["gray", "palette", "rgb", "rgba", "sixteen"], ds.images))  # sorted file order
    assert (by_name["gray"] == 90).all() and (by_name["palette"] == [10, 20, 30]).all()
    assert (by_name["rgba"] == [50, 60, 70]).all() and (by_name["rgb"] == 5).all()
    assert by_name["sixteen"][0, :, 0].tolist() == [0, 0, 128, 128]
    assert by_name["sixteen"][1, :, 0].tolist() == [255, 255, 1, 1]
    lines = [r.getMessage() for r in caplog.records if "to RGB" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("converted 4 of 5 images")


def test_fashion_mnist_style_grayscale_set_loads_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cname in ("shirt", "sneaker"):
            for i in range(n):
                save(tmp_path / split / cname / f"{i}.png", Image.fromarray(rng.integers(0, 256, (28, 28), np.uint8)))
    train, test = load_datasets(str(tmp_path))
    assert train.images.shape == (8, 28, 28, 3) and test.images.shape == (4, 28, 28, 3)
    assert (train.images[..., 0] == train.images[..., 2]).all()


def utf8_zip_without_flag(tmp_path: Path, tree: Path, placeholder: str, real: str) -> Path:
    """A zip whose names hold UTF-8 bytes without the UTF-8 flag, as Info-ZIP `zip` on Linux writes them."""
    assert len(placeholder.encode()) == len(real.encode())
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(tree.rglob("*")):
            zf.write(f, f.relative_to(tree).as_posix())
    raw = archive.read_bytes().replace(f"/{placeholder}/".encode(), f"/{real}/".encode())
    archive.write_bytes(raw)
    with zipfile.ZipFile(archive) as zf:  # the premise: zipfile alone garbles the name
        assert all(not i.flag_bits & 0x800 for i in zf.infolist())
        assert any("τî½" in n for n in zf.namelist())
    return archive


def test_non_ascii_class_names_from_a_zip_without_utf8_flag_equal_the_folder(tmp_path):
    tree = tmp_path / "tree"
    two_class_tree(tree)
    for split in ("train", "test"):
        (tree / split / "b").rename(tree / split / "XYZ")
    archive = utf8_zip_without_flag(tmp_path, tree, "XYZ", "猫")
    for split in ("train", "test"):
        (tree / split / "XYZ").rename(tree / split / "猫")
    from_zip, _ = load_datasets(str(archive))
    from_folder, _ = load_datasets(str(tree))
    assert from_zip.classes == from_folder.classes == ("a", "猫")
    assert np.array_equal(from_zip.images, from_folder.images)


@pytest.mark.parametrize("name", ["val", "valid", "validation"])
def test_val_folder_is_the_evaluation_split_with_a_note(tmp_path, caplog, name):
    two_class_tree(tmp_path)
    (tmp_path / "test").rename(tmp_path / name)
    with caplog.at_level(logging.INFO, logger="pytorch_utils.data.folders"):
        train, test = load_datasets(str(tmp_path))
    assert len(test) == 2 and test.classes == train.classes
    assert any(f"{name}/" in r.getMessage() for r in caplog.records)


def test_torchvision_cifar_folder_as_a_path_suggests_the_name_and_root(tmp_path):
    batches = tmp_path / "dl" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (batches / "data_batch_1").write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        load_datasets(str(batches))
    assert "data='cifar10'" in str(err.value) and f"root={str(tmp_path / 'dl')!r}" in str(err.value)


def test_decoding_shows_progress_only_after_a_delay(tmp_path, monkeypatch):
    import tqdm.auto

    seen = {}
    real = tqdm.auto.tqdm

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", spy)
    two_class_tree(tmp_path / "p")
    load_image_folder(tmp_path / "p", "train")
    assert seen["total"] == 2 and seen["delay"] == folders.PROGRESS_DELAY >= 1.0


def test_cache_sees_added_moved_and_overwritten_files_not_only_the_root(tmp_path):
    two_class_tree(tmp_path)
    first = load_image_folder(tmp_path, "train")
    assert load_image_folder(tmp_path, "train").images is first.images  # unchanged: not decoded again
    root_mtime = tmp_path.stat().st_mtime_ns
    save(tmp_path / "train" / "a" / "1.png", rgb_image(7))  # a notebook cell adds an image to a class folder
    assert tmp_path.stat().st_mtime_ns == root_mtime  # the premise: the root's own time did not change
    assert load_image_folder(tmp_path, "train").class_counts().tolist() == [2, 1]
    (tmp_path / "train" / "a" / "1.png").rename(tmp_path / "train" / "b" / "1.png")  # moved
    assert load_image_folder(tmp_path, "train").class_counts().tolist() == [1, 2]
    target = tmp_path / "train" / "b" / "1.png"
    stat = target.stat()
    save(target, rgb_image(9))  # overwritten in place: same name, same size, the time put back...
    assert target.stat().st_size == stat.st_size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # ...but for one nanosecond
    assert (load_image_folder(tmp_path, "train").images[2] == 9).all()


def test_cache_of_a_zip_sees_it_rewritten_at_the_same_time(tmp_path):
    image, archive = save(tmp_path / "0.png", rgb_image(3)), tmp_path / "data.zip"
    for n in (1, 2):
        with zipfile.ZipFile(archive, "w") as zf:
            for i in range(n):
                zf.write(image, f"train/a/{i}.png")
        os.utime(archive, ns=(0, 10**18))  # the same modification time both times: only the size differs
        assert len(load_image_folder(archive, "train")) == n
