"""Files from strangers (issue 20): non-raster formats, decompression bombs, oversized images and hostile zips are each
refused with one DatasetError naming the file and the limit, before anything large is allocated."""
import io
import os
import resource
import struct
import subprocess
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytorch_utils.data import load_datasets
from pytorch_utils.data.folders import IMAGE_FORMATS, MAX_SIDE, load_image_folder, open_image
from pytorch_utils.errors import ConfigError, DatasetError

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


def png_bytes(value: int = 7, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def gray_png_bomb(path: Path, w: int, h: int) -> Path:
    """A valid all-black 8-bit grayscale PNG of w x h pixels, written row by row (a few KB per megapixel)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), bytes(w + 1)  # filter byte 0 + w black pixels
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def peak_rss_growth_mb(fn) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024



def _refused_load_and_peak(archive):
    """The DatasetError loading ``archive`` raises, and the peak Python memory (bytes) it took to get there."""
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as err:
            load_image_folder(archive, "train")
        return err, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

def test_postscript_saved_as_jpg_is_refused_by_name_without_starting_ghostscript(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    eps = tmp_path / "train" / "a" / "x.jpg"
    eps.parent.mkdir(parents=True)
    eps.write_bytes(EPS)
    assert Image.open(eps).format == "EPS"  # the premise: Pillow alone would take it (and run gs to decode it)
    for load in (lambda: open_image(eps), lambda: load_image_folder(tmp_path, "train")):
        with pytest.raises(DatasetError) as err:
            load()
        assert str(eps) in str(err.value) and ", ".join(IMAGE_FORMATS) in str(err.value)
        assert "\n" not in str(err.value)
    assert started == []


def test_every_accepted_format_opens_as_rgb_whatever_its_extension(tmp_path):
    for fmt in IMAGE_FORMATS:
        path = tmp_path / f"{fmt}.img"
        Image.fromarray(np.full((6, 5, 3), 100, np.uint8)).save(path, format=fmt)
        pixels = open_image(path)
        assert pixels.shape == (6, 5, 3) and pixels.dtype == np.uint8
    with pytest.raises(DatasetError, match="nope.png"):
        open_image(tmp_path / "nope.png")


def test_pillow_decompression_bomb_is_one_error_naming_file_and_limit(tmp_path):
    bomb = gray_png_bomb(tmp_path / "bomb.png", 14000, 14000)  # 196 megapixels in 200 KB: over Pillow's own limit
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(DatasetError) as err:
        open_image(bomb)
    assert str(bomb) in str(err.value) and "max_pixels=" in str(err.value) and "\n" not in str(err.value)


def test_image_over_max_pixels_is_refused_from_its_header_before_decoding(tmp_path):
    big = gray_png_bomb(tmp_path / "big.png", 9000, 9000)  # under Pillow's own limit, over ours
    with pytest.raises(DatasetError, match=r"big\.png declares 9000x9000 pixels.*max_pixels=67,108,864"):
        open_image(big)
    assert peak_rss_growth_mb(lambda: pytest.raises(DatasetError, open_image, big)) < 100  # 243 MB if decoded
    assert open_image(big, max_pixels=10**8).shape == (9000, 9000, 3)  # the limit is an argument


def test_a_strip_of_max_pixels_is_refused_from_its_header(tmp_path):
    strip = gray_png_bomb(tmp_path / "strip.png", 70000, 1)  # at 67 megapixels, 2.8 GB to decode and resize
    with pytest.raises(DatasetError, match=r"strip\.png declares 70000x1 pixels.*max_side=65535: resize it"):
        open_image(strip)
    assert open_image(strip, max_side=70000).shape == (1, 70000, 3)


def test_training_images_over_max_side_are_refused_naming_the_limit(tmp_path):
    for split in ("train", "test"):
        for i in range(10 if split == "train" else 2):
            path = tmp_path / split / f"c{i % 2}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (1000, 1000)).save(path)
    with pytest.raises(DatasetError) as err:
        load_datasets(str(tmp_path))
    assert "1000x1000" in str(err.value) and f"max_side={MAX_SIDE}" in str(err.value)
    assert str(tmp_path / "train" / "c0" / "0.png") in str(err.value)
    test = load_image_folder(tmp_path, "test", max_side=1000)  # a user who means it raises the limit
    assert test.images.shape == (2, 1000, 1000, 3)


def member_zip(path: Path, data: bytes, method=zipfile.ZIP_STORED, flag: int = 0, compress_type=None) -> Path:
    """A zip holding train/a/0.png = ``data``, its central directory entry patched (flag bits, compression method)."""
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("train/a/0.png", data)
    raw = bytearray(path.read_bytes())
    i = raw.rindex(b"PK\x01\x02")
    flags, method_now = struct.unpack_from("<HH", raw, i + 8)
    struct.pack_into("<HH", raw, i + 8, flags | flag, method_now if compress_type is None else compress_type)
    path.write_bytes(bytes(raw))
    return path


def test_zip_member_over_the_declared_size_limit_is_refused_before_reading(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("train/a/0.png", "w", force_zip64=True) as f:
            for _ in range(200):  # 200 MB of zeros: a few hundred KB compressed
                f.write(bytes(1 << 20))
    assert archive.stat().st_size < 1 << 20
    err, peak = _refused_load_and_peak(archive)
    assert f"{archive}!train/a/0.png" in str(err.value) and "max_member_bytes=67,108,864" in str(err.value)
    assert peak < 10 << 20  # nothing was decompressed


def test_zip_member_compressing_too_well_is_refused_and_the_limit_is_an_argument(tmp_path):
    archive = member_zip(tmp_path / "ratio.zip", bytes(4 << 20), zipfile.ZIP_DEFLATED)  # 4 MiB, ~1000x
    with pytest.raises(DatasetError, match=r"train/a/0\.png declares 4,194,304 bytes.*100x compression"):
        load_image_folder(archive, "train")
    small = member_zip(tmp_path / "small.zip", png_bytes())
    assert len(load_image_folder(small, "train")) == 1
    with pytest.raises(DatasetError, match="max_member_bytes=50"):
        load_image_folder(small, "train", max_member_bytes=50)


@pytest.mark.parametrize("damage,what", [
    ("encrypted", "is encrypted"),
    ("deflate64", "Deflate64"),
    ("bad_crc", "is damaged"),
    ("bad_stream", "is damaged"),
    ("truncated", "is not a readable zip"),
])
def test_zips_python_cannot_read_are_one_error_naming_the_zip(tmp_path, damage, what):
    archive, png = tmp_path / "data.zip", png_bytes()
    if damage == "encrypted":
        member_zip(archive, png, flag=0x1)
    elif damage == "deflate64":
        member_zip(archive, png, compress_type=9)
    else:
        member_zip(archive, png, zipfile.ZIP_STORED if damage != "bad_stream" else zipfile.ZIP_DEFLATED)
        raw = bytearray(archive.read_bytes())
        start = raw.index(b"train/a/0.png") + len("train/a/0.png")
        if damage == "truncated":
            raw = raw[:len(raw) // 2]
        else:  # flip bytes inside the member's data
            for k in range(start + 20, start + 30):
                raw[k] ^= 0xFF
        archive.write_bytes(bytes(raw))
    with pytest.raises(DatasetError) as err:
        load_image_folder(archive, "train")
    msg = str(err.value)
    assert str(archive) in msg and what in msg and "\n" not in msg


def go_style_zip64(path: Path) -> Path:
    """A one-image zip with zip64's end record and locator, its classic end record saying "see zip64" (0xFFFF,
    0xFFFFFFFF), as Go's archive/zip writes every zip of 65,535 or more files."""
    member_zip(path, png_bytes())
    raw = bytearray(path.read_bytes())
    end = raw.rindex(b"PK\x05\x06")
    entries, size, offset = struct.unpack_from("<HII", raw, end + 10)
    zip64 = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, entries, entries, size, offset)
    struct.pack_into("<HHII", raw, end + 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    raw[end:end] = zip64 + b"PK\x06\x07" + struct.pack("<IQI", 0, end, 1)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("record", ["end", "zip64", "zip64 after extensible data"])
def test_zip_declaring_a_huge_file_list_is_refused_before_zipfile_reads_it(tmp_path, record):
    archive = member_zip(tmp_path / "many.zip", png_bytes())
    raw = bytearray(archive.read_bytes())
    end = raw.rindex(b"PK\x05\x06")
    if record == "end":  # the central directory's size, as a million-member zip would declare
        struct.pack_into("<I", raw, end + 12, 200 << 20)
    else:  # zip64's end record (size 1 TiB) and the locator pointing at it, which zipfile reads first
        zip64 = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, 1, 1, 1 << 40, 0)
        gap = bytes(8) if "extensible" in record else b""  # Python 3.13 finds the record by the locator's offset
        raw[end:end] = zip64 + gap + b"PK\x06\x07" + struct.pack("<IQI", 0, end, 1)
    archive.write_bytes(bytes(raw))
    err, peak = _refused_load_and_peak(archive)
    listed = "209,715,200" if record == "end" else "1,099,511,627,776"
    msg = str(err.value)
    assert msg.startswith(f"{archive} declares a file list (central directory) of {listed} bytes; the limit is 33,")
    assert "not a readable zip" not in msg and "unpack it into a folder" in msg
    assert peak < 1 << 20


def test_zip64_that_go_writes_loads(tmp_path):
    archive = go_style_zip64(tmp_path / "go.zip")
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == ["train/a/0.png"]
    assert len(load_image_folder(archive, "train")) == 1


def test_zip_member_lying_about_its_size_is_read_no_further_than_declared(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/a/0.png", bytes(64 << 20))  # 64 MiB of zeros, declared below as 1000 bytes
    raw = bytearray(archive.read_bytes())
    for header, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central uncompressed size
        struct.pack_into("<I", raw, raw.index(header) + offset, 1000)
    archive.write_bytes(bytes(raw))
    err, peak = _refused_load_and_peak(archive)
    assert f"{archive}!train/a/0.png" in str(err.value) and "\n" not in str(err.value)
    assert peak < 4 << 20  # zipfile.read would inflate all 64 MiB (twice) before its CRC check


def test_data_set_over_max_total_pixels_is_refused_in_one_line_before_allocating(tmp_path):
    for i in range(4):
        path = tmp_path / "train" / f"c{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(i, size=16))
    with pytest.raises(DatasetError) as err:
        load_image_folder(tmp_path, "train", max_total_pixels=1000)
    msg = str(err.value)
    assert "4 images of 16x16 = 1,024 pixels" in msg and "max_total_pixels=1000" in msg and str(tmp_path) in msg
    assert "\n" not in msg
    assert len(load_image_folder(tmp_path, "train", max_total_pixels=1024)) == 4


def test_compute_mean_std_chunks_large_images_by_pixels_exactly(monkeypatch):
    from pytorch_utils.data import stats

    images = np.random.default_rng(0).integers(0, 256, (3, 300, 200, 3), dtype=np.uint8)
    flat = images.reshape(-1, 3).astype(np.float64)
    monkeypatch.setattr(stats, "CHUNK_PIXELS", 7000)  # rows of one image at a time (35 rows of 200 pixels)
    for data in (images, images[:, ::2, ::3]):  # also a view that is not contiguous
        mean, std = stats.compute_mean_std(data)
        ref = data.reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(mean, ref.mean(0) / 255, rtol=0, atol=1e-12)
        np.testing.assert_allclose(std, ref.std(0) / 255, rtol=0, atol=1e-12)
    monkeypatch.undo()
    assert stats.compute_mean_std(images) == stats.compute_mean_std(images, batch=1)
    np.testing.assert_allclose(stats.compute_mean_std(images)[1], flat.std(0) / 255, rtol=0, atol=1e-12)


def test_images_pillow_only_warns_about_are_refused_by_max_pixels_without_a_warning(tmp_path):
    import warnings

    big = gray_png_bomb(tmp_path / "big.png", 10000, 10000)  # 100 megapixels: Pillow warns (89 to 179), does not stop
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would surface here as an exception
        with pytest.raises(DatasetError, match=r"big\.png declares 10000x10000 pixels.*max_pixels=67,108,864"):
            open_image(big)


@pytest.mark.parametrize("link", ["train/b", "train/a/1.png", "test"])
def test_a_symbolic_link_in_a_data_folder_is_refused_naming_it(tmp_path, link):
    data, outside = tmp_path / "data", tmp_path / "outside"  # the link points outside the data folder
    for root in (data, outside):
        for rel in ("train/a/0.png", "train/b/0.png", "test/a/0.png", "test/b/0.png"):
            if root == outside or not rel.startswith(link):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(png_bytes())
    (data / link).symlink_to(outside / (link if "." not in link else "train/a/0.png"))
    (data / "unused").symlink_to(outside)  # beside the splits: never read, never walked
    with pytest.raises(DatasetError) as err:
        load_datasets(str(data))
    msg = str(err.value)
    assert f"{data / link} is a symbolic link" in msg and "\n" not in msg


def test_folders_deeper_than_the_images_are_never_walked(tmp_path):
    for rel in ("train/a/0.png", "train/b/0.png", "test/a/0.png", "test/b/0.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png_bytes())
    deep = tmp_path / "train" / "a" / "sub"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY)  # beyond PATH_MAX (4096) only relative to an open folder
    for _ in range(100):
        os.mkdir("d" * 50, dir_fd=fd)
        fd, old = os.open("d" * 50, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    os.symlink("/", "link", dir_fd=fd)  # never read: deeper than any image
    os.close(fd)
    train, _ = load_datasets(str(tmp_path))  # was: OSError File name too long
    assert train.images.shape == (2, 8, 8, 3)


def test_a_symbolic_link_stored_in_a_zip_is_not_followed(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes(200))
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/a/0.png", png_bytes())
        link = zipfile.ZipInfo("train/a/1.png")
        link.external_attr = 0o120777 << 16  # a Unix symbolic link whose stored data is the target's path
        zf.writestr(link, str(outside))
    with pytest.raises(DatasetError, match=rf"cannot decode image {archive}!train/a/1\.png"):
        load_image_folder(archive, "train")  # its stored text is read as the image: not an image, never the target


def test_data_limits_are_arguments_of_load_datasets_and_recipe_fields(tmp_path):
    from pytorch_utils.recipes.base import get_recipe, parse_override

    for i in range(4):
        path = tmp_path / ("train" if i < 2 else "test") / f"c{i % 2}" / "0.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(i, size=16))
    with pytest.raises(DatasetError, match="max_total_pixels=500"):
        load_datasets(str(tmp_path), max_total_pixels=500)
    with pytest.raises(DatasetError, match="16x16 pixels.*max_side=8"):
        load_datasets(str(tmp_path), max_side=8)
    assert len(load_datasets(str(tmp_path), max_side=16, max_total_pixels=512)[0]) == 2
    recipe = get_recipe("default")
    assert parse_override(recipe, "max_side=64") == {"max_side": 64}  # the CLI's --set max_side=64
    assert parse_override(recipe, "max_total_pixels=1000000") == {"max_total_pixels": 1000000}
    with pytest.raises(ConfigError, match="recipe field 'max_side' must be >= 1, got 0"):
        recipe.replace(max_side=0)
