"""CIFAR-10/100 through torchvision (``download=True`` fetches them, e.g. in Colab)."""
import os
from typing import Callable, Optional

import numpy as np

from pytorch_utils.data.arrays import ArrayDataset, PathLike
from pytorch_utils.data.constants import DATASET_STATS
from pytorch_utils.errors import DatasetNotFoundError


def load_cifar(name: str = "cifar10", root: PathLike = "./data", train: bool = True, download: bool = False,
               transform: Optional[Callable] = None) -> ArrayDataset:
    """CIFAR-10/100 (``name``: "cifar10"/"cifar100", checked by ``load_datasets``) through torchvision from/into
    ``root``, as an ArrayDataset of uint8 (N, 32, 32, 3) images with the package's mean/std/classes; ``train``: the
    50k split, else the 10k test split. DatasetNotFoundError: files missing and no ``download``, or it failed.
    """
    import torchvision

    mean, std, classes = DATASET_STATS[name]
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        raw = cls(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as exc:  # torchvision's "Dataset not found or corrupted"; URLError: no network
        hint = ("download=True needs internet (e.g. Colab); offline, use an image folder or zip of the data instead"
                if download else "pass download=True to fetch it (needs internet, e.g. in Colab), or point root= at "
                "the folder that holds it")
        raise DatasetNotFoundError(f"cannot load {name} from {os.path.abspath(root)!r} ({exc}); {hint}") from exc
    return ArrayDataset(np.asarray(raw.data, dtype=np.uint8), np.asarray(raw.targets, dtype=np.int64), classes,
                        transform=transform, mean=mean, std=std)
