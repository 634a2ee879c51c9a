"""Data: in-memory data sets (CIFAR, image folders/zips, synthetic), augmentation presets, stats and loaders.

Typical use::

    train_ds, test_ds = load_datasets("cifar10", download=True)
    size, note = choose_input_size(model, train_ds.image_size)   # the data's own size unless the model needs 32
    train_loader = make_loader(train_ds, 512, train=True, seed=0)  # or gpu.GPULoader(train_ds, ...): same contract
    train_loader.set_augmentation("standard", size=size)          # a preset of list_presets()
    test_loader = make_loader(test_ds, 512, train=False)
    test_loader.set_augmentation("test", size=size)
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)                              # explicit, as DistributedSampler
        ...
"""
from pytorch_utils.data.arrays import ArrayDataset
from pytorch_utils.data.cifar import load_cifar
from pytorch_utils.data.constants import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_CLASSES,
    CIFAR100_MEAN,
    CIFAR100_STD,
)
from pytorch_utils.data.datasets import load_datasets
from pytorch_utils.data.folders import load_image_folder
from pytorch_utils.data.input_size import choose_input_size
from pytorch_utils.data.loaders import make_loader, set_loader_epoch
from pytorch_utils.data.stats import compute_mean_std
from pytorch_utils.data.synthetic import make_synthetic
from pytorch_utils.data.transforms import check_augmentation, get_preset, list_presets

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_CLASSES", "CIFAR100_MEAN", "CIFAR100_STD",
    "ArrayDataset", "load_cifar", "load_image_folder", "make_synthetic", "load_datasets", "compute_mean_std",
    "choose_input_size", "get_preset", "list_presets", "check_augmentation", "make_loader", "set_loader_epoch",
]
