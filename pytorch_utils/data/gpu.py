"""GPU-resident loader: the whole uint8 data set lives on the device, batches are augmented there.

CIFAR-10 is 150 MB as uint8; keeping it on the GPU removes DataLoader workers, host-to-device copies and per-image
albumentations calls (Colab's 2 CPUs starve a fast GPU); the design follows airbench's loader. Same contract as
``make_loader``: ``set_epoch(e)`` selects the (seed, e) order, ``set_augmentation`` is the one augmentation switch.
"""
import math
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from pytorch_utils.data.gpu_ops import (  # noqa: F401  (re-exported: the batch ops used to live here)
    _normalize_coefficients, _normalize_with, cutout, normalize, pad_constant, pixel_fill, random_crop_with_padding,
    random_flip, random_resized_crop_rotate, resize,
)
from pytorch_utils.data.loaders import EpochSampler
from pytorch_utils.data.transforms import GPUAugment, get_augmentation
from pytorch_utils.errors import ConfigError

_OPTIONS = ("pad", "cutout", "cutout_p", "rotate", "scale")  # GPUAugment's settable fields


def _seed_for(*values: int) -> int:
    """A 63-bit seed that is a pure function of the given integers (independent streams per tuple)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint64)[0] >> 1)


class GPULoader:
    """Batches of an ``ArrayDataset`` held on ``device`` (default CUDA if available), shuffled and augmented there.

    Yields normalized ``dtype`` inputs (B, 3, size, size) (``channels_last`` optional) and int64 targets (B,) on
    ``device``. Epoch ``e``'s order is ``EpochSampler(n, shuffle=train, seed, num_replicas, rank, even=train)``'s;
    augmentation draws come from a device generator seeded from (seed, e, rank). ``iter()`` never advances the
    epoch (tqdm.auto calls it twice per pass): call ``set_epoch(e)`` before each epoch. A new loader does no
    augmentation at the data's own size. The data set mean is the fill colour (``round(mean * 255)``).
    ``drop_last`` defaults to ``train`` (always False when not training); an evaluation loader takes only "test".
    Raises ConfigError: ``drop_last`` with fewer items per rank than one batch.
    """

    def __init__(self, dataset, *, batch_size: int, train: bool, device=None, seed: int = 0,
                 drop_last: Optional[bool] = None, channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 num_replicas: int = 1, rank: int = 0):
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        self.dataset = dataset
        self.train, self.batch_size, self.seed = bool(train), int(batch_size), int(seed)
        self.drop_last = self.train and (drop_last is None or bool(drop_last))
        self.channels_last, self.dtype = channels_last, dtype
        self.sampler = EpochSampler(len(dataset), shuffle=self.train, seed=self.seed, num_replicas=num_replicas,
                                    rank=rank, even=self.train)
        if self.drop_last and self.batch_size > self.sampler.num_samples:
            raise ConfigError(f"batch_size={self.batch_size} is larger than the {self.sampler.num_samples} items per "
                              "rank and drop_last=True, so no batch would be produced; lower batch_size, use more "
                              "data, or pass drop_last=False")
        # Upload once; permuting on the device avoids a strided host copy.
        images = torch.from_numpy(np.ascontiguousarray(dataset.images)).to(self.device)
        self.images = images.permute(0, 3, 1, 2).contiguous()
        self.targets = torch.as_tensor(dataset.targets, dtype=torch.int64).to(self.device)
        # On the device once, so the per-batch work never copies from the host (no GPU stalls).
        self._fill = torch.tensor(pixel_fill(dataset.mean), dtype=torch.float32, device=self.device)
        self._scale, self._shift = _normalize_coefficients(dataset.mean, dataset.std, 3, self.device)
        self.options = {}
        self.size = int(dataset.images.shape[1])
        self.set_augmentation("test")

    @property
    def n(self) -> int:
        """Number of items in the data set (all ranks)."""
        return self.sampler.n

    def set_augmentation(self, name: Optional[str], size: Optional[int] = None, **options) -> None:
        """Switch to preset ``name`` (None: "test") and/or output side ``size`` (None: keep) from the next iteration.

        ``options`` are kept for later switches (``pad``, ``cutout``, ``cutout_p``, ``rotate``, ``scale``; others,
        such as the CPU-only ``flip``, are ignored). Raises UnknownNameError, or ConfigError for a preset without a
        GPU side or augmentation on an evaluation loader.
        """
        name = "test" if name in (None, "none") else name
        pipeline = get_augmentation(name, "gpu")
        if not self.train and name != "test":
            raise ConfigError(f"augmentation {name!r} on an evaluation loader (train=False); use 'test'")
        self.options.update({k: v for k, v in options.items() if k in _OPTIONS})
        self.size = self.size if size is None else int(size)
        self.augmentation, self._pipeline = name, pipeline
        self._settings = GPUAugment(self.size, self._fill, **self.options)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentation draws the next iteration produces."""
        self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration produces."""
        return self.sampler.epoch

    def indices(self, epoch: Optional[int] = None) -> torch.Tensor:
        """This rank's sample order for ``epoch`` (default: the current one), as a CPU int64 tensor."""
        return torch.from_numpy(self.sampler.indices(epoch))

    def __len__(self) -> int:
        if self.drop_last:
            return self.sampler.num_samples // self.batch_size
        return math.ceil(self.sampler.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        # Bind the epoch and preset now; nothing runs until the first next(), so a dropped iterator costs nothing.
        return self._batches(self.sampler.epoch, self._pipeline, self._settings)

    def _batches(self, epoch: int, pipeline, settings: GPUAugment) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices(epoch).to(self.device)
        generator = None
        if self.augmentation != "test":
            generator = torch.Generator(device=self.device)
            generator.manual_seed(_seed_for(self.seed, epoch, self.sampler.rank, 0x6175))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = pipeline(self.images[idx], settings, generator)
            x = _normalize_with(x, self._scale, self._shift, self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.targets[idx]

    def __repr__(self) -> str:
        return (f"GPULoader(n={self.n}, batch_size={self.batch_size}, train={self.train}, device={self.device}, "
                f"augmentation={self.augmentation!r}, size={self.size}, batches={len(self)})")
