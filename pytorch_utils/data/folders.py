"""Image folders and zips laid out as ``<root>/<split>/<class>/<image>``, decoded once into an ArrayDataset."""
import io
import logging
import os
import struct
import zipfile
from collections import Counter, OrderedDict
from contextlib import closing
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from pytorch_utils.data.arrays import ArrayDataset, PathLike, stratified_indices
from pytorch_utils.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from pytorch_utils.data.stats import compute_mean_std
from pytorch_utils.errors import ConfigError, DatasetError, DatasetNotFoundError

log = logging.getLogger(__name__)

# Folder names accepted as the evaluation split, in order of preference.
EVAL_SPLITS = ("test", "val", "valid", "validation")
# Pillow plugins that only identify a file (stubs needing an external handler) or need an external program.
_NOT_DECODABLE = {"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS"}
# Decoding shows a progress bar only when it takes longer than this (seconds): small sets stay quiet.
PROGRESS_DELAY = 2.0


@lru_cache(maxsize=1)
def image_extensions() -> FrozenSet[str]:
    """Lower-case extensions (with the dot) of every format this Pillow can decode: .jpg .png .webp .tif ..."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in _NOT_DECODABLE)


# A few entries hold train+test of one or two data sets; a full CIFAR-sized split is ~150 MB.
_IMAGE_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_IMAGE_CACHE_SIZE = 6


def clear_image_cache() -> None:
    """Forget every image folder/zip decoded by ``load_image_folder`` in this process (frees the memory)."""
    _IMAGE_CACHE.clear()


# What PIL (and zipfile, for a damaged member) raise on a file that is not a decodable image: UnidentifiedImageError
# and "image file is truncated" are OSErrors; some format plugins raise SyntaxError, ValueError or struct.error.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zipfile.BadZipFile)


def _is_hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _is_image(name: str) -> bool:
    return not _is_hidden(name) and os.path.splitext(name)[1].lower() in image_extensions()


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The member name as its writer meant it: without the UTF-8 flag (bit 11) zipfile decodes cp437, but Info-ZIP
    ``zip`` on Linux stores UTF-8 without the flag, so a name that re-decodes as UTF-8 is taken as such."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


class _Source:
    """A directory tree or a zip file, listed and read with names relative to the data root."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None
        self.members = {_zip_name(i): i for i in self.zip.infolist()} if self.zip is not None else {}

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def top_dirs(self) -> List[str]:
        if self.zip is None:
            return sorted(e.name for e in os.scandir(self.path) if e.is_dir() and not _is_hidden(e.name))
        return sorted({n.split("/")[0] for n in self.members if "/" in n and not _is_hidden(n.split("/")[0])})

    def has_dir(self, rel: str) -> bool:
        if self.zip is None:
            return (self.path / rel).is_dir()
        prefix = rel.rstrip("/") + "/"
        return any(n.startswith(prefix) for n in self.members)

    def class_files(self, split_dir: str) -> Dict[str, List[str]]:
        """{class folder: sorted image names (relative)} for images directly inside ``split_dir/<class>/``."""
        out: Dict[str, List[str]] = {}
        if self.zip is None:
            for entry in os.scandir(self.path / split_dir):
                if entry.is_dir() and not _is_hidden(entry.name):
                    out[entry.name] = sorted(f"{split_dir}/{entry.name}/{f.name}" for f in os.scandir(entry.path)
                                             if f.is_file() and _is_image(f.name))
            return out
        prefix = split_dir.rstrip("/") + "/"
        for n in self.members:
            parts = n[len(prefix):].split("/") if n.startswith(prefix) else []
            if len(parts) < 2 or not parts[0] or _is_hidden(parts[0]):
                continue  # files lying directly in split/ are not in a class folder
            files = out.setdefault(parts[0], [])
            if len(parts) == 2 and _is_image(parts[1]):
                files.append(n)
        return {c: sorted(f) for c, f in out.items()}

    def open_image(self, rel: str):
        from PIL import Image

        if self.zip is None:
            return Image.open(self.path / rel)
        return Image.open(io.BytesIO(self.zip.read(self.members[rel])))

    def describe(self, rel: str) -> str:
        return f"{self.path}{'!' if self.zip is not None else os.sep}{rel}"


def to_rgb(im) -> np.ndarray:
    """A PIL image of any mode as uint8 (H, W, 3) RGB: 8-bit modes via ``convert("RGB")`` (torchvision's way, alpha
    dropped); 16-bit, ``I`` and ``F`` scaled to 8 bits first (65535 or 1.0 -> 255), which ``convert`` would clip."""
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or a.max() > 255:
            a = a / 257.0  # 65535 / 257 = 255: the full 16-bit range onto the full 8-bit range
        elif im.mode == "F" and a.max() <= 1.0:
            a = a * 255.0
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow asks for this route (a warning otherwise); the alpha is dropped below
    return np.asarray(im.convert("RGB"))


def _decode_images(source: _Source, files: Sequence[str]) -> Tuple[np.ndarray, Counter]:
    """``files`` as one uint8 (N, H, W, 3) RGB array, and a count of the converted files per original mode;
    DatasetError names an undecodable or differently sized file."""
    from tqdm.auto import tqdm

    images, first_name, first_size = None, None, None
    converted: Counter = Counter()
    with tqdm(total=len(files), desc=f"decoding {source.path.name}", unit="img", delay=PROGRESS_DELAY,
              leave=False) as bar:
        for i, rel in enumerate(files):
            try:
                with source.open_image(rel) as im:
                    mode, size = im.mode, im.size
                    pixels = to_rgb(im) if first_size is None or size == first_size else None
            except _DECODE_ERRORS as exc:
                raise DatasetError(f"cannot decode image {source.describe(rel)} ({type(exc).__name__}: {exc}); the "
                                   "file is corrupt or not an image: remove or replace it, then load again") from exc
            if first_size is None:
                first_name, first_size = rel, size
                images = np.empty((len(files), size[1], size[0], 3), dtype=np.uint8)
            elif size != first_size:
                raise DatasetError(f"images have mixed sizes: {source.describe(first_name)} is {first_size[0]}x"
                                   f"{first_size[1]} but {source.describe(rel)} is {size[0]}x{size[1]} (WxH); resize "
                                   "them to one size first")
            if mode != "RGB":
                converted[mode] += 1
            images[i] = pixels
            bar.update()
    return images, converted


STATS_OPTIONS = ("auto", "compute")


def _check_stats_option(stats) -> None:
    if stats not in STATS_OPTIONS:
        raise ConfigError(f"unknown stats option {stats!r}; use 'auto' (CIFAR-10's for a folder with its class names, "
                          "else computed) or 'compute' (always computed from the images)")


def _split_dir(source: _Source, split: str) -> Optional[str]:
    """``split`` itself, or ``<top>/split`` when a zip wraps the splits in one top-level folder; None if absent."""
    if source.has_dir(split):
        return split
    tops = source.top_dirs()
    if len(tops) == 1 and source.has_dir(f"{tops[0]}/{split}"):
        return f"{tops[0]}/{split}"
    return None


def find_eval_split(path: PathLike) -> str:
    """The evaluation split of a folder/zip: "test", else the first of "val", "valid", "validation" present (with
    a log note); "test" when none is (loading it then raises the usual error)."""
    with closing(_Source(Path(path).expanduser().resolve())) as source:
        for split in EVAL_SPLITS:
            if _split_dir(source, split) is not None:
                if split != "test":
                    log.info("no test/ folder in %s: evaluating on its %s/ folder", path, split)
                return split
    return "test"


def _list_split(source: _Source, path: Path, split: str,
                classes: Optional[Sequence[str]]) -> Tuple[List[str], np.ndarray, Tuple[str, ...]]:
    """(files, labels, class names) of one split; checks class folders against ``classes`` (see load_image_folder)."""
    split_dir, where = _split_dir(source, split), f"{path}/{split}"
    if split_dir is None:
        tops = source.top_dirs()
        also = f" (the evaluation split may also be named {', '.join(EVAL_SPLITS[1:])})" if split in EVAL_SPLITS else ""
        raise DatasetError(f"no {split!r} folder in {path}: expected images at {where}/<class>/<image>{also}, found "
                           f"top-level: {', '.join(tops[:10]) + (' ...' * (len(tops) > 10)) if tops else 'no folders'}")
    by_class = source.class_files(split_dir)
    names = tuple(sorted(by_class)) if classes is None else tuple(str(c) for c in classes)
    unknown = sorted(c for c, f in by_class.items() if f and c not in names)
    if unknown:
        raise DatasetError(f"training lacks the class(es) {unknown} found in {where} (training classes: "
                           f"{list(names)}); add those class folders to train/ or remove them from {split}/")
    empty = [c for c in names if not by_class.get(c)]
    if empty and len(empty) < len(names):
        if classes is None:  # this split defines the classes (training): a class without images cannot be learnt
            raise DatasetError(f"class folder(s) {empty} in {where} hold no image file Pillow can read (.jpg, .png, "
                               ".webp, .bmp, .gif, .tif, ... in any letter case); add images or remove the folder(s)")
        log.warning("%s has no images of class(es) %s: their per-class results are undefined (listed in the data "
                    "set's empty_classes)", where, empty)
    files = [f for c in names for f in by_class.get(c, [])]
    labels = np.asarray([i for i, c in enumerate(names) for _ in by_class.get(c, [])], dtype=np.int64)
    if not files:
        found = f"{len(by_class)} class folder(s) ({', '.join(sorted(by_class)[:5])}) without image files" \
            if by_class else "no class folders"
        raise DatasetError(f"no images in {where}: expected {where}/<class>/<image> (.jpg, .png, .webp, ...), found "
                           f"{found}")
    return files, labels, names


def load_image_folder(path: PathLike, split: str = "train", classes: Optional[Sequence[str]] = None,
                      limit: Optional[int] = None, seed: int = 0,
                      transform: Optional[Callable] = None, stats: str = "auto") -> ArrayDataset:
    """Images laid out as ``split/<class>/<image>`` in a folder or a zip (splits may sit in one top-level folder),
    decoded once into memory as RGB (``to_rgb``). ``limit`` picks a stratified seeded subset before decoding. The
    arrays are cached per (path, its mtime, split, limit, seed, classes, stats) and shared by the returned data sets:
    do not modify ``ds.images`` in place; ``clear_image_cache()`` frees them.

    ``classes``: class names in label order (for an evaluation split, the training classes: one without images is
    then a warning and in ``ds.empty_classes``); default: the sorted class folders. ``stats``: "auto": CIFAR-10's
    published mean/std for a folder with exactly its class names (a JPEG export normalizes like torchvision's copy),
    else computed; "compute": always computed. DatasetNotFoundError: no ``path``; ConfigError: unknown ``stats``;
    DatasetError: no split folder, class folders or images, a class folder without images (``classes=None``), class
    folders the training classes lack, or an undecodable or differently sized file (named).
    """
    _check_stats_option(stats)
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"data path {str(path)!r} does not exist; pass a folder or .zip laid out as "
                                   f"<path>/{split}/<class>/<image>")
    path = path.resolve()
    if path.is_file() and not zipfile.is_zipfile(path):
        raise DatasetError(f"{path} is a file but not a zip; pass a folder or a .zip laid out as "
                           f"<path>/{split}/<class>/<image>")
    key = (str(path), path.stat().st_mtime_ns, split, limit, seed, tuple(classes) if classes is not None else None,
           stats)
    if key not in _IMAGE_CACHE:
        with closing(_Source(path)) as source:
            files, targets, names = _list_split(source, path, split, classes)
            if limit is not None:
                keep = stratified_indices(targets, limit, seed)
                files, targets = [files[i] for i in keep], targets[keep]
            images, converted = _decode_images(source, files)
        if converted:
            modes = ", ".join(f"{m}: {n}" for m, n in sorted(converted.items()))
            log.info("converted %d of %d images in %s/%s to RGB (%s)", sum(converted.values()), len(files), path,
                     split, modes)
        cifar = stats == "auto" and names == CIFAR10_CLASSES
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if cifar else compute_mean_std(images)
        _IMAGE_CACHE[key] = (images, targets, names, mean, std)
        while len(_IMAGE_CACHE) > _IMAGE_CACHE_SIZE:
            _IMAGE_CACHE.popitem(last=False)
    _IMAGE_CACHE.move_to_end(key)
    images, targets, names, mean, std = _IMAGE_CACHE[key]
    return ArrayDataset(images, targets, names, transform=transform, mean=mean, std=std)
