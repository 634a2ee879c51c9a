"""Call 1 of the GPU check: decode the JPEG CIFAR-10 zip once into uint8 arrays that the stages of call 2 load.

Why: the zip (59.3 MiB) and the wheels of call 2 do not fit in one 64 MiB transfer, but the GPU machine keeps
ignored files between two calls made while it is still held, so call 1 turns the zip into

    <out>/train_images.npy  uint8 (50000, 32, 32, 3)    <out>/train_labels.npy  int64 (50000,)
    <out>/test_images.npy   uint8 (10000, 32, 32, 3)    <out>/test_labels.npy   int64 (10000,)
    <out>/meta.json         classes, counts, decode seconds, the zip's name and size

Needs only numpy and Pillow (no wheels, no package import), so call 1 carries nothing but the zip. Images are
decoded with PIL and converted to RGB, in the order the package's image-folder loader uses (classes sorted by
name, files sorted within a class); ``check.py`` loads them with ``benchmarks.device.data.load_arrays``.

Usage: ``python benchmarks/device/decode.py local-data/cifar10-jpeg.zip local-cache/cifar10-jpeg``
"""
import argparse
import io
import json
import os
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_members(zip_path: Path):
    """``{split: [(class, member name), ...]}`` sorted by class then name; hidden entries (``__MACOSX``) skipped."""
    out = {split: [] for split in SPLITS}
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            if len(parts) != 3 or parts[0] not in out or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            out[parts[0]].append((parts[1], name))
    return {split: sorted(items) for split, items in out.items()}


def _decode_chunk(args):
    from PIL import Image

    zip_path, names = args
    with zipfile.ZipFile(zip_path) as zf:
        return np.stack([np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB"), dtype=np.uint8)
                         for n in names])


def decode_split(zip_path: Path, items, workers: int) -> np.ndarray:
    """Decode the members ``items`` (class, name) into one uint8 (N, H, W, 3) array, ``workers`` processes."""
    names = [n for _, n in items]
    size = max(1, len(names) // (workers * 4))
    chunks = [(str(zip_path), names[i:i + size]) for i in range(0, len(names), size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return np.concatenate(list(pool.map(_decode_chunk, chunks)))


def main(argv=None) -> dict:
    """Decode both splits of the zip into ``out``; print and return the meta record (also written as meta.json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zip", type=Path, help="the JPEG CIFAR-10 zip (train|test/<class>/*.jpg)")
    parser.add_argument("out", type=Path, help="folder for the .npy files (git-ignored, e.g. local-cache/...)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="decode processes")
    args = parser.parse_args(argv)
    if not args.zip.is_file():
        sys.exit(f"decode: {args.zip} does not exist; run benchmarks/device/prepare.sh and carry local-data")
    start = time.perf_counter()
    members = list_members(args.zip)
    classes = sorted({c for c, _ in members["train"]})
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        images = decode_split(args.zip, members[split], args.workers)
        labels = np.asarray([classes.index(c) for c, _ in members[split]], dtype=np.int64)
        np.save(args.out / f"{split}_images.npy", images)
        np.save(args.out / f"{split}_labels.npy", labels)
        counts[split] = int(len(labels))
    meta = {"source": args.zip.name, "source_bytes": args.zip.stat().st_size, "classes": classes,
            "counts": counts, "decode_s": round(time.perf_counter() - start, 3), "workers": args.workers}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))
    return meta


if __name__ == "__main__":
    main()
