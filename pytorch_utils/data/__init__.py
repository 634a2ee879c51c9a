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
from pytorch_utils.data.constants import (
    CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD, DATASET_STATS,
)
from pytorch_utils.data.datasets import (
    DATASET_NAMES, ArrayDataset, clear_image_cache, find_eval_split, image_extensions, load_cifar, load_datasets,
    load_image_folder, make_synthetic, stratified_indices, to_rgb,
)
from pytorch_utils.data.input_size import choose_input_size
from pytorch_utils.data.loaders import (
    EpochDataLoader, EpochSampler, EpochWorkerInit, default_num_workers, derive_seed, make_loader, set_loader_epoch,
)
from pytorch_utils.data.stats import compute_mean_std
from pytorch_utils.data.transforms import (
    AlbumentationsTransform, get_augmentation, get_preset, list_presets, preset_options, register_augmentation,
    reduced_preset, seed_compose, test_preset, train_preset, wrn_preset,
)

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_CLASSES", "CIFAR100_MEAN", "CIFAR100_STD",
    "DATASET_STATS", "DATASET_NAMES", "ArrayDataset", "load_cifar", "load_image_folder", "make_synthetic",
    "load_datasets", "clear_image_cache", "stratified_indices", "find_eval_split", "image_extensions", "to_rgb",
    "AlbumentationsTransform", "train_preset", "test_preset", "wrn_preset", "reduced_preset", "get_preset",
    "list_presets", "seed_compose", "get_augmentation", "register_augmentation", "preset_options",
    "choose_input_size", "compute_mean_std", "default_num_workers", "derive_seed", "EpochSampler",
    "EpochDataLoader", "EpochWorkerInit", "make_loader", "set_loader_epoch",
]
