"""GPU-resident batch pipeline: the whole uint8 data set lives on the device, batches are augmented there.

CIFAR-10 is 150 MB as uint8, so it fits on any GPU. Keeping it there removes the DataLoader workers, the host to
device copies and the per-image albumentations calls (Colab has 2 CPUs, which starve a fast GPU): each batch costs
a gather plus a handful of batched kernels.

The augmentations are pure functions of a (N, C, H, W) tensor and a ``torch.Generator``. They reproduce the
albumentations presets of ``pytorch_utils.data.transforms`` in distribution:

- ``random_crop_with_padding`` = PadIfNeeded(size + 2 * pad, constant fill) > RandomCrop(size);
- ``random_flip`` = HorizontalFlip(p);
- ``cutout`` = CoarseDropout with one size x size hole lying fully inside the image;
- ``random_resized_crop_rotate`` = RandomResizedCrop > Rotate, as one bilinear ``grid_sample``;
- ``normalize`` = Normalize(mean, std, max_pixel_value=255).

Images stay in pixel units (0-255) until ``normalize``; fills are the data set mean in pixel units, rounded to an
integer as the CPU presets do, so a filled pixel normalizes to ~0.

The draws differ from albumentations' own (other generators), so GPU and CPU runs with the same seed see different
augmentations; the sample order, however, is the one ``make_loader``/``EpochSampler`` uses for the same seed.
"""
import math
from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from pytorch_utils.data.constants import CIFAR10_MEAN, CIFAR10_STD
from pytorch_utils.data.arrays import as_stats
from pytorch_utils.data.loaders import epoch_indices, shard_size
from pytorch_utils.errors import ConfigError, DatasetError, UnknownNameError

Stats = Sequence[float]
Fill = Union[float, Sequence[float], torch.Tensor]

# name -> what the training pipeline does. Mirrors the CPU presets of the same names.
AUGMENTATIONS = ("standard", "standard_no_cutout", "reduced", "wrn", "test", "none")


# --------------------------------------------------------------------------------------------- augmentations


def _fill_tensor(fill: Fill, x: torch.Tensor) -> torch.Tensor:
    """The per-channel fill as a (1, C, 1, 1) tensor of ``x``'s dtype and device (rounded for integer dtypes).

    A fill already given as a tensor on ``x.device`` is used in place: building it from Python numbers copies
    host to device, which would stall the GPU once per batch in the loader.
    """
    channels = x.shape[1]
    if isinstance(fill, torch.Tensor) and fill.device == x.device:
        f = fill.reshape(-1)
    else:
        f = torch.as_tensor(fill, dtype=torch.float64).reshape(-1)
    if f.numel() == 1:
        f = f.expand(channels)
    if f.numel() != channels:
        raise ConfigError(f"fill must be one value or one per channel ({channels}), got {f.numel()} values")
    if not x.dtype.is_floating_point:
        f = f.round()
    return f.to(device=x.device, dtype=x.dtype).view(1, channels, 1, 1)


def _check_batch(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"{what} expects a (N, C, H, W) tensor, got {shape}")


def pad_constant(x: torch.Tensor, pad: int, fill: Fill) -> torch.Tensor:
    """Pad each side of a (N, C, H, W) batch by ``pad`` pixels of a constant per-channel ``fill``.

    Args:
        x: the batch (any dtype, any device).
        pad: border width on each side (>= 0).
        fill: one value or one per channel, in the units of ``x`` (pixel units for uint8 batches).
    Returns:
        (N, C, H + 2 * pad, W + 2 * pad) tensor of ``x``'s dtype.
    """
    _check_batch(x, "pad_constant")
    if pad == 0:
        return x
    n, c, h, w = x.shape
    # F.pad only takes one scalar for all channels; fill a fresh buffer and copy the image into its middle.
    out = x.new_empty((n, c, h + 2 * pad, w + 2 * pad))
    out[:] = _fill_tensor(fill, x)
    out[:, :, pad:pad + h, pad:pad + w] = x
    return out


def random_crop_with_padding(x: torch.Tensor, size: int, pad: int, fill: Fill, generator: Optional[torch.Generator]
                             = None, return_offsets: bool = False):
    """Pad by ``pad`` with a constant fill, then take one random ``size`` x ``size`` crop per image.

    Offsets (top, left) are uniform integers in ``[0, 2 * pad + H - size]`` (and likewise for W), as
    albumentations' PadIfNeeded > RandomCrop. The crop is one gather over the padded batch: no loop over images.

    Args:
        x: (N, C, H, W) batch, any dtype/device.
        size: crop side; ``size <= H + 2 * pad`` and ``<= W + 2 * pad``.
        pad: border added on each side before cropping.
        fill: per-channel pad colour in the units of ``x``.
        generator: a ``torch.Generator`` on ``x.device`` (None: torch's default generator).
        return_offsets: also return the (top, left) offsets, each (N,) int64 on ``x.device``.
    Returns:
        (N, C, size, size) tensor, or ``(crops, (top, left))``.
    Raises:
        ConfigError: the crop does not fit in the padded image.
    """
    _check_batch(x, "random_crop_with_padding")
    n, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    if size < 1 or size > hp or size > wp or pad < 0:
        raise ConfigError(f"cannot take a {size}x{size} crop from {h}x{w} images padded by {pad}")
    padded = pad_constant(x, pad, fill)
    top = torch.randint(0, hp - size + 1, (n,), generator=generator, device=x.device)
    left = torch.randint(0, wp - size + 1, (n,), generator=generator, device=x.device)
    ar = torch.arange(size, device=x.device)
    rows = (top[:, None] + ar)[:, None, :, None]  # (N, 1, size, 1)
    cols = (left[:, None] + ar)[:, None, None, :]  # (N, 1, 1, size)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    return (out, (top, left)) if return_offsets else out


def random_flip(x: torch.Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None,
                return_mask: bool = False):
    """Flip each image of a (N, C, H, W) batch left-right with probability ``p``.

    Args:
        x: the batch.
        p: flip probability (0: never, 1: always).
        generator: a ``torch.Generator`` on ``x.device``.
        return_mask: also return the (N,) bool mask of flipped images.
    Returns:
        the batch (new tensor), or ``(batch, mask)``.
    """
    _check_batch(x, "random_flip")
    mask = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    out = torch.where(mask[:, None, None, None], x.flip(3), x)
    return (out, mask) if return_mask else out


def cutout(x: torch.Tensor, size: int, fill: Fill, p: float = 0.5, generator: Optional[torch.Generator] = None,
           return_boxes: bool = False):
    """Fill one ``size`` x ``size`` square per image with a constant colour, with probability ``p``.

    Like albumentations' CoarseDropout with one hole: the hole lies fully inside the image, its top-left corner
    uniform in ``[0, H - size] x [0, W - size]``.

    Args:
        x: (N, C, H, W) batch.
        size: hole side (0 returns ``x`` unchanged).
        fill: per-channel hole colour in the units of ``x``.
        p: probability that an image gets its hole.
        generator: a ``torch.Generator`` on ``x.device``.
        return_boxes: also return ``(top, left, applied)``: (N,) int64, int64 and bool tensors.
    Returns:
        the batch, or ``(batch, (top, left, applied))``.
    Raises:
        ConfigError: the hole is larger than the image.
    """
    _check_batch(x, "cutout")
    n, _, h, w = x.shape
    if size < 0 or size > h or size > w:
        raise ConfigError(f"cutout size must be in [0, {min(h, w)}] for {h}x{w} images, got {size}")
    # Always draw, so the random stream (and every later augmentation) does not depend on p or size.
    top = torch.randint(0, h - size + 1, (n,), generator=generator, device=x.device)
    left = torch.randint(0, w - size + 1, (n,), generator=generator, device=x.device)
    applied = torch.rand(n, generator=generator, device=x.device) < p
    if size == 0:
        applied = torch.zeros_like(applied)
        out = x
    else:
        ys = torch.arange(h, device=x.device)[None, :] - top[:, None]  # (N, H)
        xs = torch.arange(w, device=x.device)[None, :] - left[:, None]  # (N, W)
        in_rows = (ys >= 0) & (ys < size)
        in_cols = (xs >= 0) & (xs < size)
        mask = in_rows[:, :, None] & in_cols[:, None, :] & applied[:, None, None]  # (N, H, W)
        out = torch.where(mask[:, None], _fill_tensor(fill, x), x)
    return (out, (top, left, applied)) if return_boxes else out


def random_resized_crop_rotate(x: torch.Tensor, size: int, fill: Fill, scale: Tuple[float, float] = (0.75, 1.0),
                               ratio: Tuple[float, float] = (0.9, 1.1), rotate: float = 15.0, rotate_p: float = 0.5,
                               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random resized crop followed by a random rotation, batched (bilinear resampling).

    Per image: a box of area ``U(scale) * H * W`` and aspect ratio ``exp(U(log ratio))`` (sides rounded to whole
    pixels, clamped to the image) at a uniform integer position, resized to ``size`` x ``size``; then, with
    probability ``rotate_p``, a rotation by ``U(-rotate, rotate)`` degrees about the centre, the uncovered corners
    filled with ``fill``. Two batched ``grid_sample`` calls, as albumentations' RandomResizedCrop > Rotate does
    two interpolations; the difference: a box too large for the image is clamped instead of redrawn (up to 10
    times, then a centre crop).

    Args:
        x: (N, C, H, W) batch; integer batches are converted to float32 (pixel units kept).
        size: output side.
        fill: per-channel border colour in the units of ``x``.
        scale, ratio: crop area fraction and aspect-ratio ranges.
        rotate: maximum absolute angle in degrees (0 disables the rotation).
        rotate_p: probability of rotating an image.
        generator: a ``torch.Generator`` on ``x.device``.
    Returns:
        (N, C, size, size) float tensor.
    """
    _check_batch(x, "random_resized_crop_rotate")
    n, _, h, w = x.shape
    dev = x.device
    if not x.dtype.is_floating_point:
        x = x.float()
    u = torch.rand(6, n, generator=generator, device=dev, dtype=torch.float32)
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * (h * w)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
    bw = torch.sqrt(area * torch.exp(log_r)).round().clamp(1, w)
    bh = torch.sqrt(area / torch.exp(log_r)).round().clamp(1, h)
    # Integer offsets uniform in [0, W - bw]: floor(u * (W - bw + 1)).
    x0 = torch.floor(u[2] * (w - bw + 1)).clamp(max=w - bw)
    y0 = torch.floor(u[3] * (h - bh + 1)).clamp(max=h - bh)
    # Stage 1, the resized crop: output coords (normalized to [-1, 1]) map linearly into the box.
    # align_corners=False matches cv2's pixel-centre convention used by A.RandomResizedCrop.
    zero = torch.zeros_like(bw)
    theta = torch.stack([
        torch.stack([bw / w, zero, (2 * x0 + bw) / w - 1], dim=1),
        torch.stack([zero, bh / h, (2 * y0 + bh) / h - 1], dim=1),
    ], dim=1)  # (N, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if not rotate:
        return out
    # Stage 2, the rotation about the centre of the crop. A separate resample (not folded into stage 1) so that,
    # as with A.Rotate, the uncovered corners get the fill colour rather than image content from outside the box.
    angle = torch.deg2rad((2 * u[4] - 1) * rotate) * (u[5] < rotate_p)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos, -sin, zero], dim=1),
        torch.stack([sin, cos, zero], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], size, size], align_corners=False)
    fill_t = _fill_tensor(fill, out)
    # grid_sample pads with zeros: sample (out - fill) and add fill back, so the border becomes the fill colour.
    return F.grid_sample(out - fill_t, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill_t


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a (N, C, H, W) batch to ``size`` x ``size`` (float32 out for integer input).

    ``align_corners=False`` and no antialiasing match cv2's INTER_LINEAR used by ``A.Resize`` for upscaling.
    """
    _check_batch(x, "resize")
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if not x.dtype.is_floating_point:
        x = x.float()
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def normalize(x: torch.Tensor, mean: Stats, std: Stats, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel for a batch in pixel units (uint8, or float on the 0-255 scale).

    Args:
        x: (N, C, H, W) batch of pixel values.
        mean, std: per-channel statistics on the [0, 1] scale (sequences, or tensors already on ``x.device``).
        dtype: output dtype (computed in float32, then cast).
    Returns:
        the normalized batch as ``dtype``.
    """
    _check_batch(x, "normalize")
    scale, shift = _normalize_coefficients(mean, std, x.shape[1], x.device)
    return _normalize_with(x, scale, shift, dtype)


def _normalize_coefficients(mean, std, channels: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) as (1, C, 1, 1) float32 tensors on ``device`` with ``x * scale + shift`` = normalize."""
    # Python numbers in float64 for accuracy; tensors stay float32 on their device (MPS has no float64).
    m = (mean.float() if isinstance(mean, torch.Tensor) else torch.tensor(mean, dtype=torch.float64)).reshape(-1)
    s = (std.float() if isinstance(std, torch.Tensor) else torch.tensor(std, dtype=torch.float64)).reshape(-1)
    if m.numel() != channels or s.numel() != channels:
        raise ConfigError(f"mean and std need {channels} values (one per channel), got {m.numel()} and {s.numel()}")
    scale = (1.0 / (255.0 * s)).to(device=device, dtype=torch.float32).view(1, channels, 1, 1)
    shift = (-m / s).to(device=device, dtype=torch.float32).view(1, channels, 1, 1)
    return scale, shift


def _normalize_with(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # One fused multiply-add: x / (255 std) - mean / std.
    out = torch.addcmul(shift, x.float(), scale)
    return out if dtype == torch.float32 else out.to(dtype)


def pixel_fill(mean: Stats) -> Tuple[int, int, int]:
    """The data set mean in pixel units, rounded like the CPU presets' fill colour (``round(m * 255)``)."""
    return tuple(int(round(float(m) * 255)) for m in mean)


# ------------------------------------------------------------------------------------------------------ loader


def _seed_for(*values: int) -> int:
    """A 63-bit seed that is a pure function of the given integers (independent streams per tuple)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint64)[0] >> 1)


class _Arrays:
    """Stands in for a data set when the loader was given raw arrays, so ``loader.dataset`` still works."""

    def __init__(self, images, targets, mean, std):
        self.images = images
        self.targets = targets
        self.mean = tuple(mean)
        self.std = tuple(std)
        n_classes = int(targets.max()) + 1 if len(targets) else 0
        self.classes = tuple(str(i) for i in range(n_classes))

    def __len__(self) -> int:
        return len(self.targets)


def _as_uint8_nhwc(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise DatasetError(f"images must be uint8 (0-255) with shape (N, H, W, 3), got dtype {images.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise DatasetError(f"images must be uint8 (0-255) with shape (N, H, W, 3), got dtype {images.dtype}")
        t = images
    else:
        raise DatasetError(
            "GPULoader needs a data set with .images/.targets or a uint8 (N, H, W, 3) array, "
            f"got {type(images).__name__}"
        )
    if t.dim() != 4 or t.shape[-1] != 3:
        raise DatasetError(f"images must have shape (N, H, W, 3) (RGB, channels last), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise DatasetError("the data set is empty")
    return t


class GPULoader:
    """Batches of a uint8 image data set held on ``device``, shuffled and augmented there.

    Yields ``(inputs, targets)``: normalized ``dtype`` inputs (B, 3, size, size) and int64 targets (B,), both on
    ``device``. The sample order of epoch ``e`` is a pure function of (seed, e) — the same permutation and rank
    sharding as ``make_loader``/``EpochSampler``: for training padded by wrapping so every rank gets the same
    count, for evaluation (``train=False``) disjoint unpadded shards that hold each item exactly once — and the
    augmentation draws come from a generator on the device seeded from (seed, e, rank). ``set_epoch(e)`` selects
    the epoch (the engine calls it before each epoch); like ``make_loader``, iterating again without it replays
    the same epoch. (The epoch is deliberately not advanced on ``iter()``: tqdm.auto calls ``iter()`` on the
    loader twice per pass.)

    Augmentations (``augmentation``), mirroring the CPU presets of the same names:
        "standard": pad (mean fill) > random crop > flip > cutout (p=cutout_p);
        "standard_no_cutout" and "reduced": pad > random crop > flip;
        "wrn": random resized crop (scale, ratio 0.9-1.1) > rotation (±rotate degrees, p=0.5) > flip > cutout;
            an oversized crop box is clamped instead of redrawn;
        "test" / "none": nothing (resize only).
    Images whose side differs from ``size`` are resized (bilinear) before the augmentation, so ``size=36/40``
    gives progressive resizing; "wrn" resizes as part of its crop.

    Args:
        dataset_or_images: a data set with ``.images`` (uint8 (N, H, W, 3)) and ``.targets`` (and optionally
            ``.mean/.std/.classes``), or the uint8 images themselves (numpy or torch).
        targets: labels (N,) when raw images are given.
        batch_size: items per batch (per rank).
        train: shuffle, augment and (by default) drop the incomplete last batch; False gives the data set order
            with no augmentation.
        device: where the data set and batches live; default CUDA when available, else the CPU.
        augmentation: preset name (see above); ignored when ``train`` is False.
        size: output side.
        mean, std: normalization stats on [0, 1]; default the data set's, else CIFAR-10's. The fill colour of
            padding, rotation corners and cutout is ``round(mean * 255)``.
        cutout: hole side (0 disables); cutout_p: probability of a hole.
        pad: border for the random crop.
        seed: base seed of shuffling and augmentation.
        drop_last: drop the incomplete last batch; default ``train`` (always False when not training).
        channels_last: return inputs in channels_last memory format.
        dtype: dtype of the inputs (float32, or bfloat16/float16 to halve the traffic).
        num_replicas, rank: distributed sharding (evaluation shards are unpadded; their counts may differ by one).
        rotate, scale: the "wrn" preset's maximum rotation (degrees) and crop area range.
    Raises:
        DatasetError: images not uint8 (N, H, W, 3), missing/mismatched targets.
        ConfigError: bad sizes, probabilities, ranks, or ``drop_last`` with fewer items per rank than a batch.
        UnknownNameError: unknown augmentation name.
    """

    def __init__(self, dataset_or_images, targets=None, *, batch_size: int, train: bool, device=None,
                 augmentation: Optional[str] = "standard", size: int = 32, mean: Optional[Stats] = None,
                 std: Optional[Stats] = None, cutout: int = 8, cutout_p: float = 0.5, pad: int = 4, seed: int = 0,
                 drop_last: Optional[bool] = None, channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 num_replicas: int = 1, rank: int = 0, rotate: float = 15.0,
                 scale: Tuple[float, float] = (0.75, 1.0)):
        source = dataset_or_images
        is_dataset = hasattr(source, "images")
        if is_dataset:
            images = _as_uint8_nhwc(source.images)
            if targets is None:
                targets = getattr(source, "targets", None)
        else:
            images = _as_uint8_nhwc(source)
        if targets is None:
            raise DatasetError("GPULoader needs targets: pass a data set with .targets or targets=...")
        targets_t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)
        if targets_t.dim() != 1 or targets_t.dtype.is_floating_point or targets_t.dtype == torch.bool:
            raise DatasetError(f"targets must be a 1-D array of integer labels, got {targets_t.dtype} "
                               f"with shape {tuple(targets_t.shape)}")
        if len(targets_t) != len(images):
            raise DatasetError(f"got {len(images)} images but {len(targets_t)} targets; they must match one to one")

        # Only a data set's stats: a raw numpy array has .mean/.std methods.
        if mean is None and is_dataset:
            mean = getattr(source, "mean", None)
        if std is None and is_dataset:
            std = getattr(source, "std", None)
        self.mean = as_stats(mean if mean is not None else CIFAR10_MEAN, "mean", ConfigError)
        self.std = as_stats(std if std is not None else CIFAR10_STD, "std", ConfigError)
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive in every channel, got {self.std}")
        if any(m > 1.5 for m in self.mean):
            raise ConfigError(f"mean {self.mean} looks like 0-255 values; pass per-channel means on the [0, 1] scale")

        if int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        if int(pad) != pad or pad < 0:
            raise ConfigError(f"pad must be a non-negative integer, got {pad!r}")
        if not 0.0 <= cutout_p <= 1.0:
            raise ConfigError(f"cutout_p must be in [0, 1], got {cutout_p}")
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype must be a floating dtype, got {dtype}")

        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.train = bool(train)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = self.train if drop_last is None else bool(drop_last) and self.train
        self.channels_last = channels_last
        self.dtype = dtype
        self.pad = int(pad)
        self.cutout = int(cutout) if cutout else 0
        self.cutout_p = float(cutout_p)
        self.rotate = float(rotate)
        self.scale = (float(scale[0]), float(scale[1]))
        self.fill = pixel_fill(self.mean)

        self.n = int(images.shape[0])
        self.native_size = (int(images.shape[1]), int(images.shape[2]))
        if self.train:
            # Sharding as DistributedSampler / EpochSampler: pad by wrapping so every rank has the same count.
            self.num_samples = math.ceil(self.n / self.num_replicas)
            self.total_size = self.num_samples * self.num_replicas
        else:
            # Evaluation: no padding, or a wrapped-around sample would be counted twice in the reduced metrics.
            self.num_samples = shard_size(self.n, self.num_replicas, self.rank)
            self.total_size = self.n
        if self.drop_last and self.batch_size > self.num_samples:
            raise ConfigError(
                f"batch_size={self.batch_size} is larger than the {self.num_samples} items per rank and "
                f"drop_last=True, so no batch would be produced; lower batch_size or pass drop_last=False"
            )

        self.augmentation = "test"
        self.size = self.native_size[0]
        self.set_augmentation(augmentation if self.train else "test", size=size)

        # Upload once; permuting on the device avoids a strided host copy. (N, 3, H, W) uint8, contiguous.
        self.images = images.to(self.device).permute(0, 3, 1, 2).contiguous()
        self.targets = targets_t.to(device=self.device, dtype=torch.int64)
        # Constants live on the device once, so the per-batch work never copies from the host (no GPU stalls).
        self._fill_t = torch.tensor(self.fill, dtype=torch.float32, device=self.device)
        self._scale, self._shift = _normalize_coefficients(self.mean, self.std, 3, self.device)
        self.dataset = source if is_dataset else _Arrays(
            images.numpy() if images.device.type == "cpu" else images.cpu().numpy(),
            targets_t.cpu().numpy(), self.mean, self.std)
        self._epoch = 0

    # -- configuration -----------------------------------------------------------------------------------------

    def set_augmentation(self, name: Optional[str], size: Optional[int] = None) -> None:
        """Switch the augmentation preset and/or the output size; takes effect at the next iteration.

        Args:
            name: one of ``AUGMENTATIONS`` (None means "none"); an evaluation loader accepts only "test"/"none".
            size: new output side, or None to keep the current one.
        Raises:
            UnknownNameError: unknown name. ConfigError: augmentation on a ``train=False`` loader, bad size.
        """
        name = "none" if name is None else str(name)
        if name not in AUGMENTATIONS:
            raise UnknownNameError(f"unknown GPU augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")
        if not self.train and name not in ("test", "none"):
            raise ConfigError(f"augmentation {name!r} on an evaluation loader (train=False); use 'test' or 'none'")
        size = self.size if size is None else size
        if int(size) != size or size < 1:
            raise ConfigError(f"size must be a positive integer, got {size!r}")
        size = int(size)
        if name in ("standard", "wrn") and self.cutout > size:
            raise ConfigError(f"cutout={self.cutout} is larger than the image side {size}")
        self.augmentation = name
        self.size = size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentation draws the next iteration produces."""
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration produces."""
        return self._epoch

    def indices(self, epoch: Optional[int] = None) -> torch.Tensor:
        """This rank's sample order for ``epoch`` (default: the current one), as a CPU int64 tensor.

        The same order as ``EpochSampler(n, shuffle=train, seed, num_replicas, rank, even=train)``.
        """
        epoch = self._epoch if epoch is None else int(epoch)
        return torch.from_numpy(epoch_indices(self.n, self.train, self.seed, epoch, self.num_replicas, self.rank,
                                              self.total_size))

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    # -- iteration ---------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        # Bind the epoch now rather than at the first next(). Nothing runs until then, so an iterator that is
        # made and dropped (tqdm.auto makes one) costs nothing. Augmentation settings are read per batch.
        return self._batches(self._epoch)

    def _batches(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices(epoch).to(self.device, non_blocking=False)
        generator = None
        if self.train and self.augmentation not in ("test", "none"):
            generator = torch.Generator(device=self.device)
            generator.manual_seed(_seed_for(self.seed, epoch, self.rank, 0x6175))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            y = self.targets[idx]
            x = self._augment(x, generator)
            x = _normalize_with(x, self._scale, self._shift, self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _augment(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Apply the current preset to a uint8 (B, 3, H, W) batch; returns pixel units (uint8 or float)."""
        name, size, fill = self.augmentation, self.size, self._fill_t
        if name == "wrn":
            x = random_resized_crop_rotate(x, size, fill, scale=self.scale, rotate=self.rotate, generator=generator)
            x = random_flip(x, 0.5, generator)
            return cutout(x, self.cutout, fill, self.cutout_p, generator) if self.cutout else x
        x = resize(x, size)
        if name in ("test", "none"):
            return x
        if self.pad:  # pad 0 would be an identity crop
            x = random_crop_with_padding(x, size, self.pad, fill, generator)
        x = random_flip(x, 0.5, generator)
        if name == "standard" and self.cutout and self.cutout_p > 0:
            x = cutout(x, self.cutout, fill, self.cutout_p, generator)
        return x

    def __repr__(self) -> str:
        return (f"GPULoader(n={self.n}, batch_size={self.batch_size}, train={self.train}, device={self.device}, "
                f"augmentation={self.augmentation!r}, size={self.size}, batches={len(self)})")
