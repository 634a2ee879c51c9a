"""Where the GPU check's images come from, and how the decoded arrays of call 1 reach ``run_recipe``.

Order of preference (``resolve_data``): the arrays ``decode.py`` wrote into ``local-cache/cifar10-jpeg`` (call 1),
then the zip in ``local-data/`` (what ``prepare.sh`` copies), then ``../shared/data/cifar10-jpeg.zip`` beside the
checkout (this machine, CI), then the synthetic set. Every record says which one it used (``data``, ``data_source``).

``run_recipe`` takes a data *name or path*; to hand it the decoded arrays, ``arrays_as_data`` swaps the
``load_datasets`` that the runner module calls for one that returns them when ``data`` is the arrays' label. This
is the one place the check reaches past the public API; if the runner stops calling ``load_datasets`` by that
name, ``npy_used()`` stays 0, the stage records ``data_source: "zip"`` and the zip is decoded as usual.
"""
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
ARRAYS_DIR = REPO / "local-cache" / "cifar10-jpeg"
LOCAL_ZIP = REPO / "local-data" / "cifar10-jpeg.zip"
SHARED_ZIP = REPO.parent / "shared" / "data" / "cifar10-jpeg.zip"
JPEG_NOTE = "JPEG CIFAR-10 copy"
_USED = {"npy": 0}


@dataclass(frozen=True)
class DataChoice:
    """What the stages train on: ``data`` is passed to ``run_recipe``; ``arrays`` is set when it is the npy cache."""

    data: str
    source: str  # "npy" | "zip" | "synthetic"
    description: str
    arrays: Optional[Path] = None
    decode_s: Optional[float] = None  # call 1's decode time, when the arrays came from it


def resolve_data(prefer_arrays: bool = True) -> DataChoice:
    """The best data at hand (see the module docstring); ``PYTORCH_UTILS_CHECK_DATA`` forces a path or "synthetic"."""
    forced = os.environ.get("PYTORCH_UTILS_CHECK_DATA")
    if forced == "synthetic":
        return DataChoice("synthetic", "synthetic", "synthetic stripes (no real images at hand)")
    if forced:
        return DataChoice(forced, "zip", f"{JPEG_NOTE} ({forced})")
    if prefer_arrays and (ARRAYS_DIR / "meta.json").is_file():
        meta = json.loads((ARRAYS_DIR / "meta.json").read_text())
        return DataChoice(str(ARRAYS_DIR), "npy", f"{JPEG_NOTE} (decoded by call 1)", ARRAYS_DIR, meta.get("decode_s"))
    for zip_path in (LOCAL_ZIP, SHARED_ZIP):
        if zip_path.is_file():
            return DataChoice(str(zip_path), "zip", f"{JPEG_NOTE} ({zip_path.name})")
    return DataChoice("synthetic", "synthetic", "synthetic stripes (no real images at hand)")


def load_arrays(folder: Path):
    """``(train_ds, test_ds)`` ArrayDatasets over the npy files of ``decode.py`` (CIFAR-10 mean/std, as the
    package's image-folder loader gives a folder with CIFAR-10's class names)."""
    import numpy as np

    from pytorch_utils.data import CIFAR10_MEAN, CIFAR10_STD, ArrayDataset

    classes = tuple(json.loads((folder / "meta.json").read_text())["classes"])
    return tuple(ArrayDataset(np.load(folder / f"{s}_images.npy"), np.load(folder / f"{s}_labels.npy"), classes,
                              mean=CIFAR10_MEAN, std=CIFAR10_STD) for s in ("train", "test"))


def npy_used() -> int:
    """How many data loads ``arrays_as_data`` answered from the arrays in this process."""
    return _USED["npy"]


@contextlib.contextmanager
def arrays_as_data(choice: DataChoice):
    """While active, ``run_recipe(data=choice.data)`` trains on the decoded arrays (no-op for other choices)."""
    if choice.arrays is None:
        yield
        return
    import pytorch_utils.recipes.runner as runner
    from pytorch_utils.data import ArrayDataset

    original = getattr(runner, "load_datasets", None)
    cached = []

    def load_datasets(data, *args, **kwargs):
        if str(data) != choice.data:
            return original(data, *args, **kwargs)
        if not cached:
            cached.extend(load_arrays(choice.arrays))
        # Fresh objects over the same arrays: the runner sets transforms and stats on what it gets.
        train, test = (ArrayDataset(ds.images, ds.targets, ds.classes, mean=ds.mean, std=ds.std) for ds in cached)
        seed = kwargs.get("seed", 0)
        if kwargs.get("train_limit"):
            train = train.limit(kwargs["train_limit"], seed=seed)
        if kwargs.get("test_limit"):
            test = test.limit(kwargs["test_limit"], seed=seed)
        test.mean, test.std = train.mean, train.std
        _USED["npy"] += 1
        return train, test

    if original is not None:
        runner.load_datasets = load_datasets
    try:
        yield
    finally:
        if original is not None:
            runner.load_datasets = original
