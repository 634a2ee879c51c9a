"""DataLoaders whose shuffling and augmentation are pure functions of (seed, epoch).

A resumed run only needs the epoch number to replay exactly the same batches: the sampler's permutation and every
worker's random state are derived from (seed, epoch[, worker_id]), never from generator state carried over from
earlier epochs. Call ``set_loader_epoch(loader, epoch)`` (or ``loader.set_epoch(epoch)``, or
``loader.sampler.set_epoch(epoch)``) before iterating each epoch, as with ``DistributedSampler``: a loader
iterated again without a ``set_epoch`` in between replays the same epoch (both loaders, this one and the GPU
loader of ``pytorch_utils.data.gpu``, follow this rule; ``fit`` calls ``set_epoch`` before every epoch).

Note: albumentations 2.0.8 does not reseed a Compose inside DataLoader workers: each worker receives a copy of the
same random state, so workers (and, with fresh workers each epoch, epochs) repeat one augmentation sequence. The
worker init here reseeds the data set's transform per (seed, epoch, worker_id).
"""
import math
import os
import random
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pytorch_utils.errors import ConfigError


def default_num_workers() -> int:
    """A sensible DataLoader worker count for this machine: the usable CPUs, capped at 8 (0 on a 1-CPU machine).

    Returns:
        int >= 0 (2 on Colab).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not available on macOS/Windows
        cpus = os.cpu_count() or 0
    return 0 if cpus <= 1 else min(cpus, 8)


def derive_seed(*values: int) -> int:
    """A 32-bit seed that is a pure function of the given integers (e.g. seed, epoch, worker_id)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def shard_size(n: int, num_replicas: int, rank: int) -> int:
    """Items of rank ``rank`` when ``n`` items are dealt out without padding (every ``num_replicas``-th one)."""
    return len(range(rank, n, num_replicas))


def epoch_indices(n: int, shuffle: bool, seed: int, epoch: int, num_replicas: int, rank: int,
                  total_size: int) -> np.ndarray:
    """Rank ``rank``'s sample order for ``epoch``: a permutation that is a pure function of (seed, epoch), padded by
    wrapping around (or cut) to ``total_size``, then every ``num_replicas``-th index from ``rank``.

    ``total_size == n`` gives disjoint shards without padding (evaluation): together exactly the ``n`` items.
    Shared by :class:`EpochSampler` and the GPU loader, so both paths visit the data in the same order.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    if total_size > n and n:
        order = np.resize(order, total_size)  # np.resize repeats the array: padding by wrapping
    else:
        order = order[:total_size]
    return order[rank:total_size:num_replicas].astype(np.int64)


class EpochSampler(Sampler):
    """Shuffled (or ordered) indices whose permutation is a pure function of (seed, epoch), sharded over ranks.

    Sharding follows ``DistributedSampler``: the index list is padded by wrapping around until it divides by
    ``num_replicas`` (or cut when ``drop_last``), and rank ``r`` takes every ``num_replicas``-th index from ``r``,
    so all ranks get the same count. With ``even=False`` (evaluation) nothing is padded or cut: the shards are
    disjoint and together hold every item exactly once, so summed metrics count no sample twice; rank counts may
    then differ by one.

    Args:
        n: data set length.
        shuffle: permute per epoch; False keeps 0..n-1.
        seed: base seed shared by all ranks.
        num_replicas, rank: number of processes and this one's index.
        drop_last: cut the tail instead of padding when ``n`` does not divide by ``num_replicas``.
        even: give every rank the same count (pad or cut); False: disjoint unpadded shards (``drop_last`` ignored).
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False, even: bool = True):
        if int(n) != n or n < 0:
            raise ConfigError(f"EpochSampler needs a non-negative length, got {n!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        self.n = int(n)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.even = bool(even)
        self.drop_last = drop_last and self.even
        self.epoch = 0
        if not self.even:
            self.num_samples = shard_size(self.n, self.num_replicas, self.rank)
            self.total_size = self.n
        else:
            if self.drop_last and self.n % self.num_replicas:
                self.num_samples = self.n // self.num_replicas
            else:
                self.num_samples = math.ceil(self.n / self.num_replicas)
            self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an int64 array."""
        return epoch_indices(self.n, self.shuffle, self.seed, self.epoch, self.num_replicas, self.rank,
                             self.total_size)

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
                transform.seed = seed
                transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            return
        dataset = getattr(dataset, "dataset", None)  # torch Subset and similar wrappers


class EpochWorkerInit:
    """``worker_init_fn`` seeding each worker from (seed, epoch, worker_id).

    Sets ``cv2.setNumThreads(0)`` (OpenCV threads inside forked workers oversubscribe the CPUs and can deadlock),
    seeds ``random``, ``numpy`` and ``torch``, and reseeds the worker's copy of the data set transform.

    Args:
        seed: base seed.
    """

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

    Built by ``make_loader``. The contract shared with the GPU-resident loader: ``set_epoch(e)`` selects the epoch
    (as ``DistributedSampler``; iterating again without it replays the same epoch, batches and augmentations
    included), and ``set_augmentation(name, size=None, **options)`` is the one augmentation switch. At the start
    of each iteration the epoch is read from the sampler and handed to the worker init (workers are created fresh
    each epoch); with ``num_workers=0`` the main-process transform is reseeded as worker 0 would be, so 0 and 1
    workers give the same batches.
    """

    augmentation: Optional[str] = None  # the preset last set by set_augmentation (None: the data set's own)
    size: Optional[int] = None  # its output side
    options: Optional[dict] = None  # preset options kept across switches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for shuffling and augmentation."""
        self.sampler.set_epoch(epoch)
        self.worker_init_fn.epoch = int(epoch)

    def set_augmentation(self, name: Optional[str], size: Optional[int] = None, **options) -> None:
        """Put preset ``name``'s albumentations transform on the data set; takes effect at the next iteration.

        Args:
            name: a preset of ``list_presets()`` (None: "test", no augmentation).
            size: output side, or None to keep the current one (at first: the data's own height).
            **options: preset options kept for later switches too (``cutout``, ``pad``, ``rotate``...); each
                preset takes the ones it knows.
        Raises:
            UnknownNameError: unknown name. ConfigError: a preset without a CPU side, or bad option values.
        """
        from pytorch_utils.data.transforms import get_preset, preset_options

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
    """A reproducible DataLoader: shuffled per (seed, epoch) when ``train``, sharded over ``num_replicas`` ranks.

    Call ``set_loader_epoch(loader, epoch)`` before each epoch (without it, every pass replays epoch 0, as with
    ``DistributedSampler``). The same seed, epoch and ``num_workers`` give the
    same batches, augmentations included (the data set's albumentations transform is reseeded per worker and
    epoch), so a resumed run replays its epochs exactly.

    Args:
        dataset: map-style data set (e.g. ``ArrayDataset``) whose ``transform`` may be swapped between epochs.
        batch_size: items per batch (per rank).
        train: shuffle, and drop the last incomplete batch by default.
        num_workers: worker processes; None uses ``default_num_workers()``.
        seed: base seed of shuffling and augmentation; None draws one at random (not reproducible).
        drop_last: drop the incomplete last batch; default ``train``.
        pin_memory: default ``torch.cuda.is_available()``.
        num_replicas, rank: distributed sharding. Training: every rank gets the same number of items (padded by
            wrapping). Evaluation (``train=False``): disjoint shards without padding, so the ranks' summed metrics
            cover each test item exactly once (rank counts may differ by one).
    Returns:
        EpochDataLoader (a ``torch.utils.data.DataLoader``) with ``.sampler`` an ``EpochSampler``.
    Raises:
        ConfigError: ``batch_size < 1``, or ``drop_last`` with fewer items per rank than ``batch_size`` (no batch
        would be produced).
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
    return EpochDataLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=EpochWorkerInit(seed),
        # Fresh workers every epoch: a transform swapped between epochs (augmentation phases) reaches them, and
        # each epoch's workers are seeded from that epoch.
        persistent_workers=False,
    )


def set_loader_epoch(loader, epoch: int) -> None:
    """Tell a loader which epoch starts (shuffle order and worker seeding); call before iterating it.

    Works for ``make_loader`` loaders, any loader with its own ``set_epoch`` (the GPU-resident loader), and any
    DataLoader whose sampler (or batch sampler) has ``set_epoch``, e.g. a ``DistributedSampler``; other loaders are
    left alone.

    Args:
        loader: the DataLoader.
        epoch: epoch number (0-based or 1-based, but the same convention on resume).
    """
    if isinstance(loader, EpochDataLoader) or hasattr(loader, "set_epoch"):  # also the GPU-resident loader
        loader.set_epoch(epoch)
        return
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            break
    if isinstance(getattr(loader, "worker_init_fn", None), EpochWorkerInit):
        loader.worker_init_fn.epoch = int(epoch)
