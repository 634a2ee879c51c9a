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
from pytorch_utils.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from pytorch_utils.data.datasets import load_datasets
from pytorch_utils.data.input_size import choose_input_size
from pytorch_utils.data.loaders import make_loader, set_loader_epoch
from pytorch_utils.data.stats import compute_mean_std
from pytorch_utils.data.transforms import get_preset, list_presets

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "ArrayDataset", "load_datasets", "compute_mean_std",
           "choose_input_size", "get_preset", "list_presets", "make_loader", "set_loader_epoch"]
