"""DataLoaders whose shuffling and augmentation are pure functions of (seed, epoch), so a resumed run replays them.

Call ``set_loader_epoch(loader, epoch)`` (or ``loader.set_epoch``) before each epoch, as with
``DistributedSampler``; without it a loader replays the same epoch (the GPU loader follows the same rule).
albumentations 2.0.8 gives every DataLoader worker a copy of one random state, so the worker init here reseeds the
data set's transform per (seed, epoch, worker_id).
"""
import math
import os
import random
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pytorch_utils.data.transforms import get_preset, preset_options, seed_compose
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

    As ``DistributedSampler``: the list is padded by wrapping (or cut when ``drop_last``) until it divides by
    ``num_replicas``, and rank ``r`` takes every ``num_replicas``-th index from ``r``. With ``even=False``
    (evaluation) nothing is padded or cut: disjoint shards hold every item once (counts may differ by one).
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False, even: bool = True):
        if int(n) != n or n < 0:
            raise ConfigError(f"EpochSampler needs a non-negative length, got {n!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        self.n, self.shuffle, self.seed, self.epoch = int(n), shuffle, int(seed), 0
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.even = bool(even)
        self.drop_last = drop_last and self.even
        if not self.even:
            self.num_samples = len(range(self.rank, self.n, self.num_replicas))
        elif self.drop_last and self.n % self.num_replicas:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas if self.even else self.n

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def indices(self, epoch: Optional[int] = None) -> np.ndarray:
        """This rank's indices for ``epoch`` (default: the current one), as an int64 array."""
        epoch = self.epoch if epoch is None else int(epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.total_size > self.n and self.n:
            order = np.resize(order, self.total_size)  # np.resize repeats the array: padding by wrapping
        else:
            order = order[:self.total_size]
        return order[self.rank:self.total_size:self.num_replicas].astype(np.int64)

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
        self.seed = int(seed)
        self.epoch = 0

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


class EpochDataLoader(DataLoader):
    """A DataLoader over an ``EpochSampler`` whose augmentation randomness also follows (seed, epoch).

    Built by ``make_loader``; same contract as the GPU loader (``set_epoch``, ``set_augmentation``). Each iteration
    hands the sampler's epoch to the (fresh) workers; with ``num_workers=0`` the main-process transform is reseeded
    as worker 0 would be, so 0 and 1 workers give the same batches.
    """

    augmentation: Optional[str] = None  # the preset last set by set_augmentation (None: the data set's own)
    size: Optional[int] = None  # its output side
    options: Optional[dict] = None  # preset options kept across switches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for shuffling and augmentation."""
        self.sampler.set_epoch(epoch)
        self.worker_init_fn.epoch = int(epoch)

    def set_augmentation(self, name: Optional[str], size: Optional[int] = None, **options) -> None:
        """Put preset ``name``'s (None: "test") transform at side ``size`` (None: keep; at first the data's height)
        on the data set from the next iteration. ``options`` are kept for later switches; each preset takes the
        ones it knows. Raises UnknownNameError, or ConfigError (no CPU side, bad option values).
        """
        name = "test" if name in (None, "none") else name
        ds = self.dataset
        self.options = {**(self.options or {}), **options}
        if size is not None:
            self.size = int(size)
        elif self.size is None:
            self.size = int(ds.images.shape[1]) if hasattr(ds, "images") else 32
        ds.transform = get_preset(name, ds.mean, ds.std, size=self.size, seed=self.worker_init_fn.seed,
                                  **preset_options(name, self.options))
        self.augmentation = name

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will produce."""
        return self.sampler.epoch

    def __iter__(self):
        # Read from the sampler so a bare loader.sampler.set_epoch(e) call is honoured too.
        epoch = self.sampler.epoch
        self.worker_init_fn.epoch = epoch
        if self.num_workers == 0:
            _reseed_transform(self.dataset, derive_seed(self.worker_init_fn.seed, epoch, 0))
        return super().__iter__()


def make_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: Optional[int] = None,
                seed: Optional[int] = 0, drop_last: Optional[bool] = None, pin_memory: Optional[bool] = None,
                num_replicas: int = 1, rank: int = 0) -> EpochDataLoader:
    """A reproducible ``EpochDataLoader``: shuffled per (seed, epoch) when ``train``, sharded over ranks.

    Same seed, epoch and ``num_workers``: same batches, augmentations included. Call ``set_loader_epoch`` before
    each epoch. ``seed=None`` draws one (not reproducible); ``num_workers`` defaults to ``default_num_workers()``,
    ``drop_last`` to ``train``, ``pin_memory`` to CUDA availability. Sharding: see ``EpochSampler`` (padded when
    training, disjoint unpadded shards otherwise). Raises ConfigError: ``batch_size < 1``, ``num_workers < 0``, or
    ``drop_last`` with fewer items per rank than ``batch_size``.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    drop_last = train if drop_last is None else drop_last
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    num_workers = default_num_workers() if num_workers is None else int(num_workers)
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    # Evaluation must not pad: a wrapped-around sample would be counted twice in the reduced test metrics.
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, num_replicas=num_replicas, rank=rank, even=train)
    # The smallest shard decides, so every rank raises (or none does) when unpadded shards differ by one.
    per_rank = sampler.num_samples if train else len(dataset) // sampler.num_replicas
    if drop_last and batch_size > per_rank:
        raise ConfigError(
            f"batch_size={batch_size} is larger than the {per_rank} items per rank and drop_last=True, so no "
            f"batch would be produced; lower batch_size to at most {per_rank}, use more data "
            "(raise the train limit), or pass drop_last=False"
        )
    # Fresh workers every epoch (persistent_workers=False): a transform swapped between epochs reaches them, and
    # each epoch's workers are seeded from that epoch.
    return EpochDataLoader(dataset, batch_size=int(batch_size), sampler=sampler, num_workers=num_workers,
                           drop_last=drop_last, pin_memory=pin_memory, worker_init_fn=EpochWorkerInit(seed),
                           persistent_workers=False)


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
