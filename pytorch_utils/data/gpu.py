"""GPU-resident loader: the whole uint8 data set lives on the device, batches are augmented there.

CIFAR-10 is 150 MB as uint8; keeping it on the GPU removes DataLoader workers, host-to-device copies and per-image
albumentations calls (Colab's 2 CPUs starve a fast GPU); the design follows airbench's loader. Same contract as
``make_loader``: ``set_epoch(e)`` selects the (seed, e) order, ``set_augmentation`` is the one augmentation switch.
"""
import math
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from pytorch_utils.data.gpu_ops import pixel_fill
from pytorch_utils.data.loaders import EpochSampler, LoaderContract, check_batches, derive_seed
from pytorch_utils.data.transforms import ResizeOptions, get_augmentation


class GPULoader(LoaderContract):
    """Batches of an ``ArrayDataset`` held on ``device`` (default CUDA if available), shuffled and augmented there:
    normalized ``dtype`` inputs (B, 3, size, size) (``channels_last`` optional) and int64 targets (B,) on ``device``.
    Epoch ``e``'s order is ``EpochSampler(n, shuffle=train, seed, num_replicas, rank, even=train)``'s; augmentation
    draws come from a device generator seeded from (seed, e, rank); ``iter()`` never advances the epoch (tqdm.auto
    calls it twice per pass). ``set_epoch``, ``set_augmentation``: see ``LoaderContract`` (a new loader: "test" at
    the data's own size). The fill colour is the data set mean. ``drop_last``: default ``train`` (never when not
    training); ConfigError when it leaves no batch."""

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
        check_batches(self.sampler, self.batch_size, self.drop_last)
        # Upload once; permuting on the device avoids a strided host copy.
        images = torch.from_numpy(np.ascontiguousarray(dataset.images)).to(self.device)
        self.images = images.permute(0, 3, 1, 2).contiguous()
        self.targets = torch.as_tensor(dataset.targets, dtype=torch.int64).to(self.device)
        # On the device once, so the per-batch work never copies from the host (no GPU stalls). Normalizing is one
        # multiply-add, x * scale + shift = (x / 255 - mean) / std, with coefficients computed in float64.
        self._fill = torch.tensor(pixel_fill(dataset.mean), dtype=torch.float32, device=self.device)
        mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (dataset.mean, dataset.std))
        self._scale, self._shift = ((1 / (255 * std)).float().to(self.device), (-mean / std).float().to(self.device))
        self.size = int(dataset.images.shape[1])
        self.set_augmentation("test")

    def _apply(self, name: str, settings: ResizeOptions) -> None:
        self._pipeline, self._settings = get_augmentation(name, "gpu"), settings

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

    def _batches(self, epoch: int, pipeline, settings: ResizeOptions) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices(epoch).to(self.device)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.seed, epoch, self.sampler.rank, 0x6175))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = pipeline(self.images[idx], settings, self._fill, generator)
            x = torch.addcmul(self._shift, x.float(), self._scale).to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.targets[idx]

    def __repr__(self) -> str:
        return (f"GPULoader(n={self.sampler.n}, batch_size={self.batch_size}, train={self.train}, "
                f"device={self.device}, augmentation={self.augmentation!r}, size={self.size}, batches={len(self)})")
