"""``load_datasets``: the one resolver of CLI and recipes (a name or a path -> ``(train_ds, test_ds)``); the sources
live in ``arrays``, ``cifar``, ``folders`` and ``synthetic``."""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

from pytorch_utils.data.arrays import ArrayDataset, PathLike
from pytorch_utils.data.cifar import load_cifar
from pytorch_utils.data.constants import DATASET_STATS
from pytorch_utils.data.folders import MAX_SIDE, MAX_TOTAL_PIXELS, find_eval_split, load_image_folder
from pytorch_utils.data.synthetic import MAX_SYNTHETIC_SIZE, SYNTHETIC_DEFAULT_SIZES, make_synthetic
from pytorch_utils.errors import ConfigError, DatasetError, UnknownNameError, bounded, check_fields

DATASET_NAMES = ("synthetic", "cifar10", "cifar100")


@dataclass(frozen=True)
class _Arguments:
    """``load_datasets``' settings, declared once with their ranges and checked before anything loads."""
    train_limit: Optional[int] = bounded(None, ge=1)  # None: every image (synthetic: 2000 / 500)
    test_limit: Optional[int] = bounded(None, ge=1)
    num_classes: Optional[int] = bounded(None, ge=2)  # None: taken from the data (synthetic: 10)
    stats: Literal["auto", "compute"] = "auto"
    max_side: int = bounded(MAX_SIDE, ge=1)
    max_total_pixels: int = bounded(MAX_TOTAL_PIXELS, ge=1)

    def __post_init__(self):
        check_fields(self, "load_datasets argument")


@dataclass(frozen=True)
class _SyntheticArguments(_Arguments):
    """Synthetic images are generated in memory one by one: a typo (test_limit=999999) would run for minutes."""
    train_limit: Optional[int] = bounded(None, ge=1, le=MAX_SYNTHETIC_SIZE)
    test_limit: Optional[int] = bounded(None, ge=1, le=MAX_SYNTHETIC_SIZE)


def load_datasets(data: PathLike, root: PathLike = "./data", download: bool = False,
                  train_limit: Optional[int] = None, test_limit: Optional[int] = None, seed: int = 0,
                  num_classes: Optional[int] = None, stats: str = "auto", max_side: int = MAX_SIDE,
                  max_total_pixels: int = MAX_TOTAL_PIXELS) -> Tuple[ArrayDataset, ArrayDataset]:
    """Resolve a data set name or path into ``(train_ds, test_ds)`` (no transform; test carries train's mean/std).

    Args:
        data: "synthetic", "cifar10", "cifar100", or a folder/zip laid out as ``train|test/<class>/*`` (``val/``,
            ``valid/`` or ``validation/`` serve as test when ``test/`` is absent).
        root, download: torchvision's CIFAR folder, and whether to download there (needs internet).
        train_limit, test_limit: stratified seeded subset sizes (synthetic: the set sizes, default 2000 / 500).
        num_classes: synthetic: number of classes (default 10); otherwise checked against the data.
        stats, max_side, max_total_pixels: folders/zips only (limits on the images), see ``load_image_folder``.
    Raises:
        UnknownNameError, DatasetNotFoundError (missing path or CIFAR files), DatasetError (torchvision's CIFAR
        folder given as a path, a folder of one class or another problem), ConfigError (an argument outside
        ``_Arguments``' declaration, ``num_classes`` contradicting the data, a synthetic size over the limit).
    """
    key = str(data).lower() if isinstance(data, str) else None
    arguments = _SyntheticArguments if key == "synthetic" else _Arguments
    arguments(train_limit, test_limit, num_classes, stats, max_side, max_total_pixels)  # before any loading
    if key == "synthetic":  # limits and num_classes are None or in range (checked above)
        k, (n_train, n_test) = num_classes or 10, SYNTHETIC_DEFAULT_SIZES
        # A separate seed stream: test images are new draws from the same class templates.
        train_ds = make_synthetic(train_limit or n_train, num_classes=k, seed=seed)
        test_ds = make_synthetic(test_limit or n_test, num_classes=k, seed=[seed, 1])
    elif key in DATASET_STATS:
        train_ds, test_ds = (load_cifar(key, root=root, train=train, download=download) for train in (True, False))
        train_ds = train_ds if train_limit is None else train_ds.limit(train_limit, seed=seed)
        test_ds = test_ds if test_limit is None else test_ds.limit(test_limit, seed=seed)
    else:
        path, limits = _image_path(data), {"stats": stats, "max_side": max_side, "max_total_pixels": max_total_pixels}
        train_ds = load_image_folder(path, "train", limit=train_limit, seed=seed, **limits)
        test_ds = load_image_folder(path, find_eval_split(path), classes=train_ds.classes, limit=test_limit,
                                    seed=seed, **limits)
    if train_ds.num_classes < 2:  # a folder of one class would train, and test at 100%
        raise DatasetError(f"{data}/train: found 1 class ({train_ds.classes[0]!r}); a classifier needs at least 2 "
                           "class folders")
    if num_classes is not None and num_classes != train_ds.num_classes:
        raise ConfigError(f"num_classes={num_classes} does not match {str(data)!r}, which has {train_ds.num_classes} "
                          "classes; drop num_classes or pick the matching data set")
    test_ds.mean, test_ds.std = train_ds.mean, train_ds.std
    return train_ds, test_ds


# Files that mark torchvision's own CIFAR download folders (they are pickles, not image folders).
_CIFAR_FOLDERS = {"cifar-10-batches-py": ("cifar10", "data_batch_1"), "cifar-100-python": ("cifar100", "meta")}


def _image_path(data: PathLike) -> Path:
    """``data`` as an image folder/zip path (a missing one is reported by ``load_image_folder``); UnknownNameError for
    a name that is no path, DatasetError for torchvision's CIFAR download folder."""
    path, text = Path(data).expanduser(), str(data)
    if not path.exists() and not (os.sep in text or "/" in text or text.lower().endswith(".zip") or text[:1] == "."):
        raise UnknownNameError(f"unknown data set {text!r}; accepted values: {', '.join(map(repr, DATASET_NAMES))}, "
                               "or a path to a folder/zip laid out as <path>/train/<class>/<image>")
    for folder, (name, marker) in _CIFAR_FOLDERS.items():
        root = path.resolve().parent if path.name == folder else path.resolve()  # the folder itself, or its parent
        if (root / folder / marker).exists():
            raise DatasetError(f"{path} is torchvision's {name} download, not an image folder; pass "
                               f"data={name!r}, root={str(root)!r}")
    return path
