"""Image folders and zips laid out as ``<root>/<split>/<class>/<image>``, decoded once into an ArrayDataset."""
import hashlib
import io
import logging
import os
import struct
import warnings
import zipfile
import zlib
from collections import Counter
from contextlib import closing
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from pytorch_utils.data.arrays import ArrayDataset, PathLike, stratified_indices
from pytorch_utils.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from pytorch_utils.data.stats import compute_mean_std
from pytorch_utils.errors import DatasetError, DatasetNotFoundError
from pytorch_utils.io import MAX_ZIP_DIRECTORY, zip_directory_bytes

log = logging.getLogger(__name__)

# Folder names accepted as the evaluation split, in order of preference.
EVAL_SPLITS = ("test", "val", "valid", "validation")
# The raster formats images are opened as (Pillow's names); any other format Pillow knows is refused by name (EPS would
# start Ghostscript, others need external handlers or are no photos).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# Limits on files from strangers, sized for CIFAR-sized work; a refusal names the file and the limit, before decoding.
MAX_PIXELS = 8192 * 8192  # pixels an image may declare in its header (a 48-megapixel photo passes)
MAX_PHOTO_SIDE = 65535  # longest side any image may declare (JPEG's): a 1-pixel strip of MAX_PIXELS takes GBs
MAX_SIDE = 256  # longest side of a data set's images: the set is held decoded (N x side^2 x 3 bytes), trained at it
MAX_MEMBER_BYTES = 64 << 20  # declared uncompressed size of one zip member
MAX_RATIO = 100  # declared uncompressed / compressed size of a zip member over 1 MiB (images barely compress)
MAX_TOTAL_PIXELS = 60000 * 32 * 32 * 4  # pixels of a whole (split of a) data set, held decoded: 737 MB
# Decoding shows a progress bar only when it takes longer than this (seconds): small sets stay quiet.
PROGRESS_DELAY = 2.0


@lru_cache(maxsize=1)
def image_extensions() -> FrozenSet[str]:
    """Lower-case extensions (with the dot) of ``IMAGE_FORMATS``: .jpg .jpeg .png .webp .bmp .gif .tif .tiff ..."""
    from PIL import Image

    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in IMAGE_FORMATS)


# What PIL raises on a file that is not a decodable image: UnidentifiedImageError and "image file is truncated" are
# OSErrors; some format plugins raise SyntaxError, ValueError or struct.error.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
# What zipfile raises on a member it cannot read: encrypted (RuntimeError), Deflate64 (NotImplementedError), damaged.
_ZIP_ERRORS = (RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error, EOFError, OSError)
_REZIP = "pass a folder, or a zip laid out as train/<class>/<image>, without a password, made with plain Deflate " \
    "(e.g. Python's shutil.make_archive(name, 'zip', folder))"


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

    def __init__(self, path: Path, max_member_bytes: int = MAX_MEMBER_BYTES):
        self.path, self.max_member_bytes = path, max_member_bytes
        try:
            listed = zip_directory_bytes(path) if path.is_file() else 0
            _refuse_over(listed > MAX_ZIP_DIRECTORY and f"a file list (central directory) of {listed:,} bytes",
                         str(path), f"{MAX_ZIP_DIRECTORY:,} bytes (CIFAR-10's 60,000 images: 4 MB)",
                         "split it into smaller zips or unpack it into a folder")
            self.zip = zipfile.ZipFile(path) if path.is_file() else None
        except DatasetError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise DatasetError(f"{path} is not a readable zip ({type(exc).__name__}: {exc}); {_REZIP}") from None
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

    def open(self, rel: str):
        """A path, or the bytes of a zip member whose declared size and compression ratio passed the limits."""
        if self.zip is None:
            return self.path / rel
        info, where = self.members[rel], f"zip member {self.describe(rel)}"
        over = info.file_size > min(self.max_member_bytes, max(1 << 20, MAX_RATIO * info.compress_size))
        _refuse_over(over and f"{info.file_size:,} bytes ({info.compress_size:,} compressed)", where,
                     f"max_member_bytes={self.max_member_bytes:,} and {MAX_RATIO}x compression above 1 MiB",
                     "remove it from the zip")
        try:
            with self.zip.open(info) as member:  # inflates no more than declared (zip.read: all, then CRC)
                return io.BytesIO(member.read(info.file_size + 1))
        except _ZIP_ERRORS as exc:
            what = "is encrypted" if info.flag_bits & 1 else "uses a compression Python cannot read (Deflate64?)" \
                if isinstance(exc, NotImplementedError) else f"is damaged ({type(exc).__name__}: {exc})"
            raise DatasetError(f"{where} {what}; {_REZIP}") from None

    def describe(self, rel: str) -> str:
        return f"{self.path}{'!' if self.zip is not None else os.sep}{rel}"


def _refuse_over(declared, name: str, limit: str, fix: str) -> None:
    """Before reading: DatasetError naming the file and the limit when ``declared`` (the sizes, in words) is set."""
    if declared:
        raise DatasetError(f"{name} declares {declared}; the limit is {limit}: {fix}")


def to_rgb(im) -> np.ndarray:
    """A PIL image of any mode as uint8 (H, W, 3) RGB: 8-bit modes via ``convert("RGB")`` (torchvision's way, alpha
    dropped); 16-bit, ``I`` and ``F`` scaled to 8 bits first (65535 or 1.0 -> 255), which ``convert`` would clip."""
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a = np.array(im, dtype=np.float32)  # exact for 16-bit values; one copy, scaled in place
        if im.mode.startswith("I;16") or a.max() > 255:
            a /= 257.0  # 65535 / 257 = 255: the full 16-bit range onto the full 8-bit range
        elif im.mode == "F" and a.max() <= 1.0:
            a *= 255.0
        gray = np.clip(np.rint(a, out=a), 0, 255, out=a).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow asks for this route (a warning otherwise); the alpha is dropped below
    return np.asarray(im.convert("RGB"))


def _decode(file, name: str, max_pixels: int, max_side: int) -> Tuple[np.ndarray, str]:
    """(uint8 (H, W, 3) RGB pixels, PIL mode) of ``file`` (a path or binary file), see ``open_image``."""
    from PIL import Image

    pixels = mode = too_big = None
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 megapixels on; max_pixels, checked first, governs
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file, formats=IMAGE_FORMATS) as im:
                (w, h), mode = im.size, im.mode
                if w * h > max_pixels or max(w, h) > max_side:
                    too_big = f"{w}x{h} pixels (WxH)"
                else:
                    pixels = to_rgb(im)
    except Image.DecompressionBombError:  # Pillow's own limit, checked when opening
        too_big = f"more than Pillow's decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
    except _DECODE_ERRORS as exc:
        raise DatasetError(f"cannot decode image {name} ({type(exc).__name__}: {exc}); accepted formats: "
                           f"{', '.join(IMAGE_FORMATS)}: remove or replace the file") from None
    _refuse_over(too_big, f"image {name}", f"max_pixels={max_pixels:,} and max_side={max_side}",
                 "resize it (e.g. to 32x32 for CIFAR-sized work) or raise the limit")
    return pixels, mode


def open_image(path: PathLike, max_pixels: int = MAX_PIXELS, max_side: int = MAX_PHOTO_SIDE) -> np.ndarray:
    """One image file as uint8 (H, W, 3) RGB (``to_rgb``), opened only as one of ``IMAGE_FORMATS`` (whatever its
    extension); DatasetError naming the file when it is none of them, unreadable, or declares more than
    ``max_pixels`` pixels or a side over ``max_side``: checked from the header, before decoding."""
    return _decode(path, str(path), max_pixels, max_side)[0]


def _decode_images(source: _Source, files: Sequence[str], max_side: int,
                   max_total_pixels: int) -> Tuple[np.ndarray, Counter]:
    """``files`` as one uint8 (N, H, W, 3) RGB array, and a count of the converted files per original mode;
    DatasetError names an undecodable, oversized or differently sized file, or a set over ``max_total_pixels``."""
    from tqdm.auto import tqdm

    images, first = None, None
    converted: Counter = Counter()
    with tqdm(total=len(files), desc=f"decoding {source.path.name}", unit="img", delay=PROGRESS_DELAY,
              leave=False) as bar:
        for i, rel in enumerate(files):
            pixels, mode = _decode(source.open(rel), source.describe(rel), MAX_PIXELS, max_side)
            if first is None:  # all images must have the first one's size: the set's size is known here
                n = len(files) * pixels.shape[0] * pixels.shape[1]
                _refuse_over(n > max_total_pixels and f"{len(files):,} images of {pixels.shape[1]}x{pixels.shape[0]}"
                             f" = {n:,} pixels", f"data set {source.path}", f"max_total_pixels={max_total_pixels}",
                             "load a subset (limit=, train_limit=) or smaller images, or raise the limit")
                first, images = rel, np.empty((len(files), *pixels.shape), dtype=np.uint8)
            elif pixels.shape != images.shape[1:]:
                (h0, w0), (h, w) = images.shape[1:3], pixels.shape[:2]
                raise DatasetError(f"images have mixed sizes: {source.describe(first)} is {w0}x{h0} but "
                                   f"{source.describe(rel)} is {w}x{h} (WxH); resize them to one size first")
            if mode != "RGB":
                converted[mode] += 1
            images[i] = pixels
            bar.update()
    return images, converted


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
            raise DatasetError(f"class folder(s) {empty} in {where} hold no image file (.jpg, .png, .webp, .bmp, "
                               ".gif, .tif, ... in any letter case); add images or remove the folder(s)")
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
                      limit: Optional[int] = None, seed: int = 0, transform: Optional[Callable] = None,
                      stats: str = "auto", max_side: int = MAX_SIDE, max_member_bytes: int = MAX_MEMBER_BYTES,
                      max_total_pixels: int = MAX_TOTAL_PIXELS) -> ArrayDataset:
    """Images laid out as ``split/<class>/<image>`` in a folder or a zip (splits may sit in one top-level folder),
    decoded once into memory as RGB, each read as ``open_image`` reads it (sides at most ``max_side``, a zip member's
    declared size at most ``max_member_bytes``, all at most ``max_total_pixels``); ``limit``: a stratified seeded
    subset, picked before decoding. Arrays are cached per (path, files' names, sizes and times, arguments), shared:
    do not modify ``ds.images`` in place; ``clear_image_cache()`` frees them. ``classes``: names in label order (an
    evaluation split's: the training classes, one without images is a warning and in ``ds.empty_classes``); default:
    the sorted class folders. ``stats`` (checked by ``load_datasets``): "auto": CIFAR-10's published mean/std for a
    folder with exactly its class names (a JPEG export normalizes like torchvision's), otherwise or "compute": computed.

    DatasetNotFoundError: no ``path``. DatasetError: no split folder, class folders or images, a class folder without
    images (``classes=None``), class folders the training classes lack, a symbolic link in the folder, an
    undecodable, oversized or differently sized file or zip member (named), a set over ``max_total_pixels``, a
    damaged, encrypted or Deflate64 zip, a zip whose file list declares over ``io.MAX_ZIP_DIRECTORY`` bytes.
    """
    assert stats in ("auto", "compute"), stats
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"data path {str(path)!r} does not exist; pass a folder or .zip laid out as "
                                   f"<path>/{split}/<class>/<image>")
    path = path.resolve()
    images, targets, names, mean, std = _decoded(path, _version(path, split), split, limit, seed, stats, max_side,
                                                 (max_member_bytes, max_total_pixels),
                                                 None if classes is None else tuple(classes))
    return ArrayDataset(images, targets, names, transform=transform, mean=mean, std=std)


def _version(path: Path, split: str):
    """What the decoded cache is keyed on, so that it sees every change: a zip's size and modification time; for a
    folder, a digest of the path, size and modification time of each entry of the split's folder and of its class
    folders (hidden ones and deeper folders aside: never read). DatasetError names a symbolic link there or on the way:
    it could point outside the data folder."""
    if path.is_file():
        return path.stat().st_size, path.stat().st_mtime_ns
    split_dir = _split_dir(_Source(path), split)  # None: no such split (_list_split says so)
    files, folders, wanted = [], [path] if split_dir else [], f"{path / (split_dir or '')}{os.sep}"
    while folders:
        for entry in os.scandir(folders.pop()):
            here = entry.path + os.sep
            depth = here[len(wanted):].count(os.sep) if here.startswith(wanted) else 0  # 1: <class>, 2: its image
            if _is_hidden(entry.name) or depth > 2 or not (depth or wanted.startswith(here)):
                continue  # neither in the split's folder down to its images nor a folder on the way to it
            if entry.is_symlink():
                raise DatasetError(f"{entry.path} is a symbolic link: a data folder must hold its files; copy them in")
            if entry.is_dir() and depth < 2:
                folders.append(entry.path)
            else:  # DirEntry.stat() caches: one system call
                files.append((entry.path, entry.stat().st_size, entry.stat().st_mtime_ns))
    return hashlib.sha256(repr(sorted(files)).encode()).digest()


@lru_cache(maxsize=6)  # a few entries hold train+test of one or two data sets; a CIFAR-sized split is ~150 MB
def _decoded(path: Path, version, split: str, limit: Optional[int], seed: int, stats: str, max_side: int,
             limits: Tuple[int, int], classes: Optional[Tuple[str, ...]]) -> tuple:
    """(images, targets, class names, mean, std) of one split, cached per ``_version`` of the files and arguments."""
    with closing(_Source(path, limits[0])) as source:
        files, targets, names = _list_split(source, path, split, classes)
        if limit is not None:
            keep = stratified_indices(targets, limit, seed)
            files, targets = [files[i] for i in keep], targets[keep]
        images, converted = _decode_images(source, files, max_side, limits[1])
    if converted:
        log.info("converted %d of %d images in %s/%s to RGB (%s)", sum(converted.values()), len(files), path, split,
                 ", ".join(f"{m}: {n}" for m, n in sorted(converted.items())))
    cifar = stats == "auto" and names == CIFAR10_CLASSES
    return images, targets, names, *((CIFAR10_MEAN, CIFAR10_STD) if cifar else compute_mean_std(images))


clear_image_cache = _decoded.cache_clear  # forget every decoded folder/zip of this process (frees the memory)
