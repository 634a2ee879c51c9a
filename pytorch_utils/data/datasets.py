"""Data sets: one in-memory ``ArrayDataset`` type, and the loaders that produce it.

Every source (torchvision CIFAR, an image folder or zip, synthetic patterns) is decoded once into a uint8
(N, H, W, 3) array plus int64 labels, so augmentation presets, the GPU batch pipeline and plots all see the same
thing. ``load_datasets`` is the single resolver the CLI and recipes use.
"""
import colorsys
import io
import os
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from pytorch_utils.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, DATASET_STATS
from pytorch_utils.data.stats import compute_mean_std
from pytorch_utils.errors import ConfigError, DatasetError, DatasetNotFoundError, UnknownNameError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DATASET_NAMES = ("synthetic", "cifar10", "cifar100")

PathLike = Union[str, os.PathLike]


def as_stats(value, what: str, error=DatasetError) -> Optional[Tuple[float, float, float]]:
    """``value`` as a tuple of 3 per-channel floats (None stays None); raises ``error`` naming ``what`` otherwise."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise error(f"{what} must be 3 per-channel floats on the [0, 1] scale, got {value!r}") from None
    if len(out) != 3:
        raise error(f"{what} must be 3 per-channel floats on the [0, 1] scale, got {len(out)} values")
    return out


def stratified_indices(targets: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A seeded, class-stratified choice of ``n`` indices into ``targets``.

    Each class gets a share of ``n`` proportional to its frequency (largest-remainder rounding), picked at random
    within the class; the result is sorted so the subset keeps the source order.

    Args:
        targets: int labels (N,).
        n: how many indices to pick; ``n >= N`` returns all of them.
        seed: seed of the choice (same seed, same subset).
    Returns:
        int64 array of sorted indices.
    Raises:
        ConfigError: ``n < 1``.
    """
    targets = np.asarray(targets)
    if int(n) != n or n < 1:
        raise ConfigError(f"limit must be a positive integer, got {n!r}")
    total = len(targets)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    classes, counts = np.unique(targets, return_counts=True)
    quota = counts * (n / total)
    take = np.floor(quota).astype(np.int64)
    # Hand the leftover slots to the classes with the largest fractional parts (ties: lower label first).
    leftover = n - int(take.sum())
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:leftover]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(targets == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


class ArrayDataset(Dataset):
    """An in-memory image classification data set: uint8 images, int64 labels, class names and stats.

    Args:
        images: uint8 numpy array (N, H, W, 3), RGB.
        targets: integer labels (N,), each in ``[0, len(classes))``; stored as int64.
        classes: class names; label ``i`` is ``classes[i]``.
        transform: callable applied to one HWC uint8 image in ``__getitem__``; public and mutable, so a training
            engine can swap augmentation presets between phases by assigning ``ds.transform = ...``.
        mean, std: per-channel statistics on the [0, 1] scale, used by presets and to de-normalize for plots.
            Computed from ``images`` on first access when not given.
    Raises:
        DatasetError: wrong dtype/shape, not 3 channels, length mismatch, or a label out of range.
    """

    def __init__(self, images: np.ndarray, targets, classes: Sequence[str], transform: Optional[Callable] = None,
                 mean=None, std=None):
        if not isinstance(images, np.ndarray):
            raise DatasetError(f"images must be a uint8 numpy array (N, H, W, 3), got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise DatasetError(
                f"images must have dtype uint8 (0-255 pixel values), got {images.dtype}; "
                "convert with (x * 255).round().astype(np.uint8) if they are floats in [0, 1]"
            )
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DatasetError(
                f"images must have shape (N, H, W, 3) (RGB, channels last), got shape {images.shape}; "
                "convert grayscale/RGBA images to RGB first (e.g. PIL's Image.convert('RGB'))"
            )
        targets = np.asarray(targets)
        if targets.ndim != 1:
            raise DatasetError(f"targets must be a 1-D array of labels, got shape {targets.shape}")
        if targets.size and not np.issubdtype(targets.dtype, np.integer):
            raise DatasetError(f"targets must be integer class labels, got dtype {targets.dtype}")
        targets = targets.astype(np.int64, copy=False)
        if len(images) != len(targets):
            raise DatasetError(f"got {len(images)} images but {len(targets)} targets; they must match one to one")
        classes = tuple(str(c) for c in classes)
        if not classes:
            raise DatasetError("classes is empty; pass the class names, label i naming classes[i]")
        bad = targets[(targets < 0) | (targets >= len(classes))]
        if bad.size:
            raise DatasetError(
                f"label {int(bad[0])} is out of range for num_classes={len(classes)} "
                f"(labels must be in [0, {len(classes) - 1}]); check the labels or the class list"
            )
        self.images = images
        self.targets = targets
        self.classes = classes
        self.transform = transform
        self._mean = as_stats(mean, "mean")
        self._std = as_stats(std, "std")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index) -> Tuple[torch.Tensor, int]:
        image = self.images[int(index)]
        target = int(self.targets[int(index)])
        if self.transform is not None:
            return self.transform(image), target
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0), target

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def image_size(self) -> Tuple[int, int]:
        """(H, W) of the images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def mean(self) -> Tuple[float, float, float]:
        """Per-channel mean on the [0, 1] scale (computed from the images if it was not given)."""
        if self._mean is None:
            self._mean, self._std = compute_mean_std(self.images)
        return self._mean

    @mean.setter
    def mean(self, value) -> None:
        self._mean = as_stats(value, "mean")

    @property
    def std(self) -> Tuple[float, float, float]:
        """Per-channel std on the [0, 1] scale (computed from the images if it was not given)."""
        if self._std is None:
            self._mean, self._std = compute_mean_std(self.images)
        return self._std

    @std.setter
    def std(self, value) -> None:
        self._std = as_stats(value, "std")

    def subset(self, indices) -> "ArrayDataset":
        """A new ArrayDataset holding ``indices`` (same classes, transform, mean and std as this one)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise DatasetError(f"subset indices must be in [0, {len(self)}), got range "
                               f"[{int(indices.min())}, {int(indices.max())}]")
        return ArrayDataset(self.images[indices], self.targets[indices], self.classes, self.transform,
                            self.mean, self.std)

    def limit(self, n: int, seed: int = 0) -> "ArrayDataset":
        """A class-stratified, seeded subset of ``n`` items (all items when ``n >= len(self)``)."""
        return self.subset(stratified_indices(self.targets, n, seed))

    def class_counts(self) -> np.ndarray:
        """Number of items per class, shape (num_classes,)."""
        return np.bincount(self.targets, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (f"ArrayDataset(n={len(self)}, image_size={self.image_size}, num_classes={self.num_classes}, "
                f"transform={self.transform!r})")


# ---------------------------------------------------------------------------------------------------- CIFAR


def load_cifar(name: str = "cifar10", root: PathLike = "./data", train: bool = True, download: bool = False,
               transform: Optional[Callable] = None) -> ArrayDataset:
    """CIFAR-10/100 through torchvision, as an ArrayDataset with the package's mean/std/classes.

    Args:
        name: "cifar10" or "cifar100".
        root: folder holding (or receiving) torchvision's ``cifar-10-batches-py`` / ``cifar-100-python``.
        train: training split (50k) or test split (10k).
        download: fetch the archive if missing (needs internet, e.g. in Colab).
        transform: callable stored on the data set, applied per image.
    Returns:
        ArrayDataset of uint8 (N, 32, 32, 3) images.
    Raises:
        UnknownNameError: unknown ``name``. DatasetNotFoundError: files missing and ``download=False``, or the
        download failed.
    """
    import torchvision

    key = str(name).lower()
    if key not in DATASET_STATS:
        raise UnknownNameError(f"unknown CIFAR data set {name!r}; valid names: {', '.join(sorted(DATASET_STATS))}")
    mean, std, classes = DATASET_STATS[key]
    cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
    try:
        raw = cls(root=str(root), train=train, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFoundError(
            f"{key} not found under {os.path.abspath(root)!r} ({exc}); pass download=True to fetch it "
            "(needs internet, e.g. in Colab), or point root= at the folder that holds it"
        ) from exc
    except OSError as exc:  # URLError and friends: no network while downloading
        raise DatasetNotFoundError(
            f"downloading {key} into {os.path.abspath(root)!r} failed ({exc}); download=True needs internet "
            "(e.g. Colab); offline, use an image folder or zip of the data instead"
        ) from exc
    return ArrayDataset(np.asarray(raw.data, dtype=np.uint8), np.asarray(raw.targets, dtype=np.int64), classes,
                        transform=transform, mean=mean, std=std)


# ---------------------------------------------------------------------------------------------------- image folders

# (resolved path, mtime, split, limit, seed, classes) -> (images, targets, classes, mean, std); a few entries are
# enough for train+test of one or two data sets, and a full CIFAR-sized split is ~150 MB.
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


class _Source:
    """Uniform listing/reading of a directory tree or a zip file, with names relative to the data root."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def top_dirs(self) -> List[str]:
        """Visible top-level folder names."""
        if self.zip is None:
            return sorted(e.name for e in os.scandir(self.path) if e.is_dir() and not _is_hidden(e.name))
        names = set()
        for n in self.zip.namelist():
            parts = n.split("/")
            if len(parts) > 1 and not _is_hidden(parts[0]):
                names.add(parts[0])
        return sorted(names)

    def has_dir(self, rel: str) -> bool:
        if self.zip is None:
            return (self.path / rel).is_dir()
        prefix = rel.rstrip("/") + "/"
        return any(n.startswith(prefix) for n in self.zip.namelist())

    def class_files(self, split_dir: str) -> Dict[str, List[str]]:
        """{class folder: sorted image names (relative)} for images directly inside ``split_dir/<class>/``."""
        out: Dict[str, List[str]] = {}
        if self.zip is None:
            base = self.path / split_dir
            for entry in os.scandir(base):
                if entry.is_dir() and not _is_hidden(entry.name):
                    out[entry.name] = sorted(
                        f"{split_dir}/{entry.name}/{f.name}" for f in os.scandir(entry.path)
                        if f.is_file() and not _is_hidden(f.name) and f.name.lower().endswith(IMAGE_EXTENSIONS)
                    )
            return out
        prefix = split_dir.rstrip("/") + "/"
        for n in self.zip.namelist():
            if not n.startswith(prefix):
                continue
            parts = n[len(prefix):].split("/")
            if not parts[0] or _is_hidden(parts[0]) or len(parts) == 1:
                continue  # files lying directly in split/ are not in a class folder
            files = out.setdefault(parts[0], [])
            name = parts[1]
            if len(parts) == 2 and name and not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(n)
        return {c: sorted(f) for c, f in out.items()}

    def open_image(self, rel: str):
        from PIL import Image

        if self.zip is None:
            return Image.open(self.path / rel)
        return Image.open(io.BytesIO(self.zip.read(rel)))

    def describe(self, rel: str) -> str:
        return f"{self.path}{'!' if self.zip is not None else os.sep}{rel}"


def _decode_images(source: _Source, files: Sequence[str]) -> np.ndarray:
    """Decode ``files`` into one uint8 (N, H, W, 3) array, checking that each decodes and its mode and size.

    Raises:
        DatasetError: naming the file that cannot be decoded, is not RGB, or differs in size from the first one.
    """
    images = None
    first_name, first_size = None, None
    for i, rel in enumerate(files):
        try:
            with source.open_image(rel) as im:
                mode, size = im.mode, im.size
                # Pixels are read only for RGB images of the right size; the checks below raise for the others.
                pixels = np.asarray(im) if mode == "RGB" and (first_size is None or size == first_size) else None
        except _DECODE_ERRORS as exc:
            raise DatasetError(
                f"cannot decode image {source.describe(rel)} ({type(exc).__name__}: {exc}); the file is corrupt or "
                "not an image: remove it or replace it with a valid .jpg/.png, then load again"
            ) from exc
        if mode != "RGB":
            raise DatasetError(
                f"image {source.describe(rel)} has mode {mode!r}, expected 'RGB'; convert the data set to "
                "3-channel RGB (e.g. PIL's Image.convert('RGB')) before loading, or remove that file"
            )
        if first_size is None:
            first_name, first_size = rel, size
            w, h = size
            images = np.empty((len(files), h, w, 3), dtype=np.uint8)
        elif size != first_size:
            raise DatasetError(
                f"images have mixed sizes: {source.describe(first_name)} is {first_size[0]}x{first_size[1]} "
                f"but {source.describe(rel)} is {size[0]}x{size[1]} (WxH); resize them to one size first"
            )
        images[i] = pixels
    return images


STATS_OPTIONS = ("auto", "compute")


def _check_stats_option(stats) -> None:
    if stats not in STATS_OPTIONS:
        raise ConfigError(f"unknown stats option {stats!r}; use 'auto' (CIFAR-10 constants for a folder with "
                          "CIFAR-10's class names, else computed) or 'compute' (always computed from the images)")


def _find_split_dir(source: _Source, path: Path, split: str) -> str:
    if source.has_dir(split):
        return split
    tops = source.top_dirs()
    # A zip made by compressing the data folder itself wraps the splits in one top-level folder.
    if len(tops) == 1 and source.has_dir(f"{tops[0]}/{split}"):
        return f"{tops[0]}/{split}"
    found = ", ".join(tops[:10]) + (" ..." if len(tops) > 10 else "") if tops else "no folders"
    raise DatasetError(
        f"no {split!r} folder in {path}: expected images at {path}/{split}/<class>/*.jpg (or .jpeg/.png), "
        f"found top-level: {found}"
    )


def load_image_folder(path: PathLike, split: str = "train", classes: Optional[Sequence[str]] = None,
                      limit: Optional[int] = None, seed: int = 0,
                      transform: Optional[Callable] = None, stats: str = "auto") -> ArrayDataset:
    """Images laid out as ``split/<class>/*.{jpg,jpeg,png}`` in a folder or a zip, decoded once into memory.

    A zip may also wrap the splits in one top-level folder. With ``limit``, a class-stratified seeded subset is
    chosen from the file list *before* decoding, so small subsets of a large zip load quickly. Decoded arrays are
    cached in-process by (path, mtime, split, limit, seed, classes, stats), so repeated calls do not decode again
    (the returned data sets share the cached arrays: do not modify ``ds.images`` in place). The cache holds a few
    decoded splits (a full CIFAR-sized split is ~150 MB); call ``clear_image_cache()`` to free that memory, or to
    reload a folder whose images were edited in place (the key holds the mtime of ``path`` itself, which edits
    inside its sub-folders do not change).

    Normalization stats: with ``stats="auto"`` a folder whose class names are exactly CIFAR-10's (in CIFAR-10
    order) is taken to *be* CIFAR-10 and gets the published CIFAR-10 mean/std, so a JPEG export of CIFAR-10
    normalizes like torchvision's copy; any other class list gets stats computed from the loaded images. Pass
    ``stats="compute"`` for a different data set that happens to use CIFAR-10's class names.

    Args:
        path: folder or ``.zip`` file.
        split: sub-folder to read ("train", "test", ...).
        classes: class names in label order; default: the sorted class folder names. Pass the train classes when
            loading the test split so labels agree even if a class folder is missing there.
        limit: number of images to keep (stratified by class); None keeps all.
        seed: seed of the ``limit`` choice.
        transform: callable stored on the data set.
        stats: "auto" (CIFAR-10 constants for CIFAR-10's class names, else computed) or "compute" (always
            computed from the loaded images).
    Returns:
        ArrayDataset with mean/std as chosen by ``stats``.
    Raises:
        DatasetNotFoundError: ``path`` does not exist. DatasetError: no split folder, no class folders, no images,
        unknown class folders, or a file that is corrupt, not RGB, or of another size than the first image (the
        message names the file). ConfigError: an unknown ``stats`` option.
    """
    _check_stats_option(stats)
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(
            f"data path {str(path)!r} does not exist; pass a folder or .zip laid out as "
            f"<path>/{split}/<class>/*.jpg"
        )
    path = path.resolve()
    if path.is_file() and not zipfile.is_zipfile(path):
        raise DatasetError(f"{path} is a file but not a zip; pass a folder or a .zip laid out as "
                           f"<path>/{split}/<class>/*.jpg")
    key = (str(path), path.stat().st_mtime_ns, split, limit, seed, tuple(classes) if classes is not None else None,
           stats)
    if key in _IMAGE_CACHE:
        _IMAGE_CACHE.move_to_end(key)
        images, targets, names, mean, std = _IMAGE_CACHE[key]
        return ArrayDataset(images, targets, names, transform=transform, mean=mean, std=std)

    source = _Source(path)
    try:
        split_dir = _find_split_dir(source, path, split)
        by_class = source.class_files(split_dir)
        if not by_class:
            raise DatasetError(
                f"no class folders in {path}/{split}: expected images at {path}/{split}/<class>/*.jpg, "
                "found no sub-folders"
            )
        names = tuple(sorted(by_class)) if classes is None else tuple(str(c) for c in classes)
        unknown = sorted(set(by_class) - set(names))
        if unknown:
            raise DatasetError(
                f"class folders {unknown} in {path}/{split} are not in the given classes {list(names)}; "
                "pass classes=None to use the folder names, or the full class list"
            )
        files: List[str] = []
        labels: List[int] = []
        for label, cname in enumerate(names):
            found = by_class.get(cname, [])
            files.extend(found)
            labels.extend([label] * len(found))
        if not files:
            raise DatasetError(
                f"no images in {path}/{split}: expected {path}/{split}/<class>/*.jpg (or .jpeg/.png), found "
                f"{len(by_class)} class folder(s) ({', '.join(sorted(by_class)[:5])}) without image files"
            )
        targets = np.asarray(labels, dtype=np.int64)
        if limit is not None:
            keep = stratified_indices(targets, limit, seed)
            files = [files[i] for i in keep]
            targets = targets[keep]
        images = _decode_images(source, files)
    finally:
        source.close()

    if stats == "auto" and names == CIFAR10_CLASSES:
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        mean, std = compute_mean_std(images)
    _IMAGE_CACHE[key] = (images, targets, names, mean, std)
    while len(_IMAGE_CACHE) > _IMAGE_CACHE_SIZE:
        _IMAGE_CACHE.popitem(last=False)
    return ArrayDataset(images, targets, names, transform=transform, mean=mean, std=std)


# ---------------------------------------------------------------------------------------------------- synthetic


# Weight of the class colour against a random per-image colour, and pixel noise (0-255 scale): tuned so raw-pixel
# nearest-class-mean gets ~85 % on 10 classes while a small CNN reaches ~95 % in two epochs of augmented training.
_COLOUR_MIX = 0.7
_NOISE = 25.0


def _class_templates(num_classes: int):
    """Fixed per-class (RGB colour, stripe angle, stripe frequency); independent of the seed so that data sets
    made with different seeds (train vs test) share one labelling."""
    colours, angles, freqs = [], [], []
    for c in range(num_classes):
        hue = c / num_classes
        # Alternate saturation/value so neighbouring hues of many-class sets still differ in colour.
        sat = (1.0, 0.55)[c % 2]
        val = (0.9, 0.65, 0.8)[c % 3]
        colours.append(colorsys.hsv_to_rgb(hue, sat, val))
        # Angles within [0, pi/2): a horizontal flip maps angle a to -a, which no other class uses.
        angles.append((c * 0.61803398875 % 1.0) * np.pi / 2)
        freqs.append((2.0, 3.0, 4.5)[(c // 2) % 3])
    return np.asarray(colours) * 255.0, np.asarray(angles), np.asarray(freqs)


def _synthetic_arrays(n: int, num_classes: int, size: int, rng: np.random.Generator):
    colours, angles, freqs = _class_templates(num_classes)
    targets = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, c in enumerate(targets):
        # A random phase is a random shift of the stripes; a small angle jitter keeps it from being a lookup table.
        a = angles[c] + rng.normal(0.0, 0.05)
        u = xx * np.cos(a) + yy * np.sin(a)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freqs[c] * u + rng.uniform(0, 2 * np.pi))
        # A class-coloured blob at a randomly shifted spot adds a second, shift-tolerant cue.
        cy, cx = 0.5 + rng.uniform(-0.15, 0.15, size=2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.04)
        shade = 0.35 + 0.45 * stripes + 0.2 * blob
        # Mixing in a random colour keeps colour alone from solving the task: the stripes must be learned too.
        colour = _COLOUR_MIX * colours[c] + (1 - _COLOUR_MIX) * rng.uniform(0, 255, size=3)
        img = shade[..., None] * colour * rng.uniform(0.8, 1.2)
        img += rng.normal(0.0, _NOISE, size=img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, targets


# Images are generated one by one (~0.15 ms each) and held in memory (3 KB each at 32x32): 200k is ~30 s and 600 MB.
# Beyond that a typo (test_limit=999999) would hang a notebook for minutes before anything else ran.
MAX_SYNTHETIC_SIZE = 200_000
SYNTHETIC_DEFAULT_SIZES = (2000, 500)  # train, test


def make_synthetic(n: int = 2000, num_classes: int = 10, size: int = 32, seed: int = 0,
                   transform: Optional[Callable] = None) -> ArrayDataset:
    """A seeded, learnable synthetic image data set for tests and smoke runs.

    Each class has a fixed colour, stripe orientation and stripe frequency; every image adds a random stripe
    phase (a shift), a shifted blob, brightness jitter and Gaussian noise. A small CNN separates the classes in an
    epoch or two, and the cues survive pad-crop-flip-cutout augmentation.

    Args:
        n: number of images (classes balanced to within one).
        num_classes: number of classes, named ``class_0 ... class_{k-1}``.
        size: image height and width.
        seed: same seed, identical data.
        transform: callable stored on the data set.
    Returns:
        ArrayDataset of uint8 (n, size, size, 3) images with computed mean/std.
    Raises:
        ConfigError: non-positive ``n`` or ``num_classes``, ``size < 4``, or ``n`` above ``MAX_SYNTHETIC_SIZE``.
    """
    if n < 1 or num_classes < 1 or size < 4:
        raise ConfigError(f"make_synthetic needs n >= 1, num_classes >= 1 and size >= 4, got n={n}, "
                          f"num_classes={num_classes}, size={size}")
    if n > MAX_SYNTHETIC_SIZE:
        raise ConfigError(f"make_synthetic(n={n}) is above the {MAX_SYNTHETIC_SIZE:,} images it allows (generation "
                          f"takes minutes and GBs of memory); pass n <= {MAX_SYNTHETIC_SIZE}")
    images, targets = _synthetic_arrays(int(n), int(num_classes), int(size), np.random.default_rng(seed))
    mean, std = compute_mean_std(images)
    return ArrayDataset(images, targets, tuple(f"class_{i}" for i in range(num_classes)), transform=transform,
                        mean=mean, std=std)


# ---------------------------------------------------------------------------------------------------- resolver


def _option_error(name: str, value, need: str, hint: str) -> ConfigError:
    """ConfigError naming the load_datasets argument / recipe field (the CLI maps it to its flag)."""
    return ConfigError(f"{name} must be {need}, got {value!r}; {hint}")


def _check_count(name: str, value, minimum: int, hint: str) -> Optional[int]:
    """``value`` as an int >= ``minimum`` (None stays None); raises ConfigError naming option ``name``."""
    if value is None:
        return None
    try:
        ok = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError):
        ok = False
    if not ok or value < minimum:
        raise _option_error(name, value, f"None or an integer >= {minimum}", hint)
    return int(value)


def _check_num_classes(ds: ArrayDataset, num_classes: Optional[int], data: str) -> None:
    if num_classes is not None and num_classes != ds.num_classes:
        raise ConfigError(f"num_classes={num_classes} does not match {data!r}, which has {ds.num_classes} classes; "
                          "drop num_classes or pick the matching data set")


def load_datasets(data: PathLike, root: PathLike = "./data", download: bool = False,
                  train_limit: Optional[int] = None, test_limit: Optional[int] = None, seed: int = 0,
                  num_classes: Optional[int] = None, stats: str = "auto") -> Tuple[ArrayDataset, ArrayDataset]:
    """Resolve a data set name or path into ``(train_ds, test_ds)``; the single entry point of CLI and recipes.

    Args:
        data: "synthetic", "cifar10", "cifar100", or a path to a folder/zip laid out as ``train|test/<class>/*``.
        root: torchvision download folder for CIFAR.
        download: let torchvision download CIFAR (needs internet).
        train_limit, test_limit: stratified seeded subset sizes (synthetic: the set sizes, default 2000 / 500).
        seed: seed of the subsets and of the synthetic data.
        num_classes: synthetic: number of classes (default 10); otherwise checked against the data.
        stats: image folders/zips: "auto" or "compute", see ``load_image_folder`` ("auto" gives a folder with
            CIFAR-10's class names the CIFAR-10 mean/std). CIFAR uses its published stats, synthetic computed ones.
    Returns:
        ``(train_ds, test_ds)``, both without transform; the test set carries the train set's mean/std.
    Raises:
        UnknownNameError: an unknown name. DatasetNotFoundError: a path that does not exist or CIFAR files
        missing. ConfigError: a limit below 1, ``num_classes`` below 2 or contradicting the data, a synthetic size
        above ``MAX_SYNTHETIC_SIZE``, or an unknown ``stats``.
    """
    # Checked up front for every source, so a bad value fails in terms of the user's option, before any loading.
    all_hint = "leave it out (None) to use every image (synthetic: the default sizes 2000 / 500)"
    train_limit = _check_count("train_limit", train_limit, 1, all_hint)
    test_limit = _check_count("test_limit", test_limit, 1, all_hint)
    num_classes = _check_count("num_classes", num_classes, 2,
                               "a classifier needs at least 2 classes; pass None to take the count from the data "
                               "(synthetic: 10)")
    _check_stats_option(stats)
    key = str(data).lower() if isinstance(data, str) else None
    if key == "synthetic":
        k = 10 if num_classes is None else num_classes
        n_train = SYNTHETIC_DEFAULT_SIZES[0] if train_limit is None else train_limit
        n_test = SYNTHETIC_DEFAULT_SIZES[1] if test_limit is None else test_limit
        for name, n in (("train_limit", n_train), ("test_limit", n_test)):
            if n > MAX_SYNTHETIC_SIZE:  # before generating anything: a typo would otherwise run for minutes
                raise _option_error(name, n, f"at most {MAX_SYNTHETIC_SIZE} for the synthetic data set",
                                    "synthetic images are generated in memory one by one; use a smaller size")
        train_ds = make_synthetic(n_train, num_classes=k, seed=seed)
        # A separate seed stream: test images are new draws from the same class templates.
        images, targets = _synthetic_arrays(n_test, k, 32, np.random.default_rng([seed, 1]))
        test_ds = ArrayDataset(images, targets, train_ds.classes)
        train_limit = test_limit = None  # they were the set sizes
    elif key in DATASET_STATS:
        train_ds = load_cifar(key, root=root, train=True, download=download)
        test_ds = load_cifar(key, root=root, train=False, download=download)
    else:
        path = Path(data).expanduser()
        if not path.exists():
            text = str(data)
            accepted = f"{', '.join(repr(n) for n in DATASET_NAMES)}, or a path to a folder/zip laid out as " \
                       "<path>/train/<class>/*.jpg"
            if os.sep in text or "/" in text or text.lower().endswith(".zip") or text.startswith("."):
                raise DatasetNotFoundError(f"data path {text!r} does not exist; accepted values: {accepted}")
            raise UnknownNameError(f"unknown data set {text!r}; accepted values: {accepted}")
        cifar = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100"}.get(path.name)
        if cifar is not None and path.is_dir():  # torchvision's pickled batches, not an image folder
            raise DatasetError(f"{str(path)!r} holds torchvision's {cifar} files, not images in train/<class>/; "
                               f"pass data='{cifar}', root='{path.parent}'")
        train_ds = load_image_folder(path, "train", limit=train_limit, seed=seed, stats=stats)
        test_ds = load_image_folder(path, "test", classes=train_ds.classes, limit=test_limit, seed=seed,
                                    stats=stats)
        train_limit = test_limit = None  # already applied before decoding
    if train_limit is not None:
        train_ds = train_ds.limit(train_limit, seed=seed)
    if test_limit is not None:
        test_ds = test_ds.limit(test_limit, seed=seed)
    _check_num_classes(train_ds, num_classes, str(data))
    test_ds.mean, test_ds.std = train_ds.mean, train_ds.std
    return train_ds, test_ds
