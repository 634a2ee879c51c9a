"""Files from strangers (issue 20): non-raster formats, decompression bombs, oversized images and hostile zips are each
refused with one DatasetError naming the file and the limit, before anything large is allocated."""
import io
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
from pytorch_utils.errors import DatasetError

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
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as err:
            load_image_folder(archive, "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
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
