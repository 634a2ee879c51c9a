"""DataLoaders whose shuffling and augmentation are pure functions of (seed, epoch), so a resumed run replays them.
Call ``set_loader_epoch(loader, epoch)`` (or ``loader.set_epoch``) before each epoch, as with ``DistributedSampler``
(without it a loader, the GPU loader too, replays the same epoch). albumentations 2.0.8 gives every DataLoader worker
a copy of one random state, so the worker init here reseeds the data set's transform per (seed, epoch, worker_id).
"""
import dataclasses
import math
import os
import random
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pytorch_utils.data.transforms import augmentation_options, get_preset, seed_compose
from pytorch_utils.errors import ConfigError


def default_num_workers() -> int:
    """The usable CPUs, capped at 8 (0 on a 1-CPU machine; 2 on Colab)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not available on macOS/Windows
        cpus = os.cpu_count() or 0
    return 0 if cpus <= 1 else min(cpus, 8)


def derive_seed(*values: int) -> int:
    """A 32-bit seed that is a pure function of the given integers (e.g. seed, epoch, worker_id)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


class EpochSampler(Sampler):
    """Indices 0..n-1, permuted per (seed, epoch) when ``shuffle``, sharded over ranks; shared with the GPU loader.
    As ``DistributedSampler``, the list is padded by wrapping until it divides by ``num_replicas`` and rank ``r``
    takes every ``num_replicas``-th index from ``r``; with ``even=False`` (evaluation) nothing is padded: disjoint
    shards hold every item once (counts may differ by one)."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 even: bool = True):
        assert 0 <= rank < num_replicas, f"rank={rank} outside [0, num_replicas={num_replicas})"  # from the launcher
        self.n, self.shuffle, self.seed, self.epoch = int(n), shuffle, int(seed), 0
        self.num_replicas, self.rank, self.even = int(num_replicas), int(rank), bool(even)
        self.num_samples = math.ceil(n / num_replicas) if even else len(range(rank, n, num_replicas))
        self.total_size = self.num_samples * self.num_replicas if self.even else self.n

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """This rank's indices for ``epoch`` (default: the current one), as an int64 array."""
        epoch = self.epoch if epoch is None else int(epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        order = np.resize(order, self.total_size) if self.n else order  # np.resize repeats: padding by wrapping
        return order[self.rank::self.num_replicas].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


def _reseed_transform(dataset, seed: int) -> None:
    """Reseed the transform of ``dataset`` (or of the data set it wraps) if it holds its own random state."""
    while dataset is not None:
        transform = getattr(dataset, "transform", None)
        if transform is not None:
            if hasattr(transform, "set_random_seed"):  # AlbumentationsTransform
                transform.set_random_seed(seed)
            elif hasattr(transform, "set_random_state"):  # a bare albumentations Compose
                seed_compose(transform, seed)
            return
        dataset = getattr(dataset, "dataset", None)  # torch Subset and similar wrappers


class EpochWorkerInit:
    """``worker_init_fn`` seeding ``random``, ``numpy``, ``torch`` and the worker's data set transform from (seed,
    epoch, worker_id); sets ``cv2.setNumThreads(0)`` (OpenCV threads in forked workers oversubscribe and deadlock)."""

    def __init__(self, seed: int):
        self.seed, self.epoch = int(seed), 0

    def __call__(self, worker_id: int) -> None:
        import cv2

        cv2.setNumThreads(0)
        s = derive_seed(self.seed, self.epoch, worker_id)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        info = torch.utils.data.get_worker_info()
        if info is not None:
            _reseed_transform(info.dataset, s)


def check_batches(sampler: EpochSampler, batch_size: int, drop_last: bool) -> None:
    """ConfigError when ``drop_last`` and a rank's share of ``sampler`` (the smallest unpadded shard decides, so
    every rank raises or none does) holds less than one batch: nothing would be produced."""
    per_rank = sampler.num_samples if sampler.even else sampler.n // sampler.num_replicas
    if drop_last and batch_size > per_rank:
        raise ConfigError(f"batch_size={batch_size} is larger than the {per_rank} items per rank and drop_last=True, "
                          f"so no batch would be produced; lower batch_size to at most {per_rank}, use more data "
                          "(raise the train limit), or pass drop_last=False")


class LoaderContract:
    """What both package loaders (``make_loader``'s and ``GPULoader``) share over their ``sampler`` (an
    ``EpochSampler``): the epoch switch and the one augmentation switch (the preset in force, its output side, the
    options kept across switches; each loader's ``_apply`` puts a preset on it)."""

    train: bool = True
    augmentation: Optional[str] = None  # the preset last set (None: none yet; the data set's own transform)
    size: Optional[int] = None  # its output side (None: none yet; the data's height)
    options: Dict[str, Any] = {}  # replaced, never changed in place

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentation draws the next iteration produces."""
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration produces."""
        return self.sampler.epoch

    def set_augmentation(self, preset: Optional[str] = None, size: Optional[int] = None, **options) -> None:
        """From the next iteration, augment with ``preset`` (None: keep the current one and its options; at first
        "test") at output side ``size`` (None: keep the current one; at first the data's height), so a
        progressive-resizing phase calls ``set_augmentation(None, size=40)``. ``options`` must be ones ``preset``
        declares (see ``check_augmentation``); they are kept for later switches, each preset taking its own.
        Raises UnknownNameError, or ConfigError (an option it does not take, a bad value, no pipeline for this
        loader, augmentation on an evaluation loader)."""
        name = preset if preset is not None else self.augmentation or "test"
        size = size if size is not None else self.size or self.dataset.image_size[0]
        augmentation_options(name, {**options, "size": size})  # this call's options: ones the preset declares
        if not self.train and name != "test":
            raise ConfigError(f"augmentation {name!r} on an evaluation loader (train=False); use 'test'")
        kept = {**self.options, **options}
        settings = augmentation_options(name, {**kept, "size": size}, strict=False)
        self._apply(name, settings)
        self.augmentation, self.options, self.size = name, kept, settings.size

    def _apply(self, name: str, settings) -> None:
        """Put preset ``name`` with its checked ``settings`` (a ``ResizeOptions``) on this loader."""


class EpochDataLoader(LoaderContract, DataLoader):
    """A DataLoader over an ``EpochSampler`` whose augmentation randomness also follows (seed, epoch); built by
    ``make_loader``, same contract as the GPU loader (``set_augmentation`` puts the preset's transform on the data
    set). Each iteration hands the sampler's epoch to the (fresh) workers; with ``num_workers=0`` the main-process
    transform is reseeded as worker 0 would be, so 0 and 1 workers give the same batches."""

    def _apply(self, name: str, settings) -> None:
        ds = self.dataset
        ds.transform = get_preset(name, ds.mean, ds.std, seed=self.worker_init_fn.seed, **dataclasses.asdict(settings))

    def __iter__(self):
        self.worker_init_fn.epoch = epoch = self.sampler.epoch  # the sampler's: loader.sampler.set_epoch(e) counts
        if self.num_workers == 0:
            _reseed_transform(self.dataset, derive_seed(self.worker_init_fn.seed, epoch, 0))
        return super().__iter__()


def make_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: Optional[int] = None,
                seed: Optional[int] = 0, drop_last: Optional[bool] = None, pin_memory: Optional[bool] = None,
                num_replicas: int = 1, rank: int = 0) -> EpochDataLoader:
    """A reproducible ``EpochDataLoader``, shuffled per (seed, epoch) when ``train`` and sharded over ranks (see
    ``EpochSampler``: padded when training): same seed, epoch and ``num_workers``, same batches, augmentations
    included. ``seed=None`` draws one (not reproducible); defaults: ``num_workers`` ``default_num_workers()``,
    ``drop_last`` ``train``, ``pin_memory`` CUDA availability. ConfigError: ``drop_last`` with fewer items per rank
    than ``batch_size``; torch's ValueError: ``batch_size < 1``, ``num_workers < 0``."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    drop_last = train if drop_last is None else drop_last
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    num_workers = default_num_workers() if num_workers is None else num_workers
    # Evaluation must not pad: a wrapped-around sample would be counted twice in the reduced test metrics.
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, num_replicas=num_replicas, rank=rank, even=train)
    check_batches(sampler, batch_size, drop_last)
    # Fresh workers every epoch (persistent_workers=False): a transform swapped between epochs reaches them, and
    # each epoch's workers are seeded from that epoch.
    loader = EpochDataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                             drop_last=drop_last, pin_memory=pin_memory, worker_init_fn=EpochWorkerInit(seed),
                             persistent_workers=False)
    loader.train = bool(train)
    return loader


def set_loader_epoch(loader, epoch: int) -> None:
    """Select the epoch (shuffle order, worker seeds) of ``loader`` before iterating it: its own ``set_epoch`` (both
    package loaders), else its (batch) sampler's (e.g. ``DistributedSampler``); other loaders are left alone."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            break
    if isinstance(getattr(loader, "worker_init_fn", None), EpochWorkerInit):
        loader.worker_init_fn.epoch = int(epoch)
