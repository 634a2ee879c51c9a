"""Batched augmentations for the GPU-resident loader: pure functions of a (N, C, H, W) tensor and a
``torch.Generator``, reproducing the albumentations presets of ``transforms`` in distribution:

- ``random_crop_with_padding`` = PadIfNeeded(size + 2 * pad, constant fill) > RandomCrop(size);
- ``random_flip`` = HorizontalFlip(p);
- ``cutout`` = CoarseDropout with one size x size hole lying fully inside the image;
- ``random_resized_crop_rotate`` = RandomResizedCrop > Rotate, as one bilinear ``grid_sample``;
- ``normalize`` = Normalize(mean, std, max_pixel_value=255).

Images stay in pixel units (0-255) until ``normalize``; fills are the data set mean in pixel units, rounded as the
CPU presets do. The draws differ from albumentations' own, so GPU and CPU runs see different augmentations.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from pytorch_utils.errors import ConfigError

Stats = Sequence[float]
Fill = Union[float, Sequence[float], torch.Tensor]


def _fill_tensor(fill: Fill, x: torch.Tensor) -> torch.Tensor:
    """The per-channel fill as a (1, C, 1, 1) tensor of ``x``'s dtype and device (rounded for integer dtypes).

    A tensor already on ``x.device`` is used in place: building it from numbers would stall the GPU every batch.
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
    """Pad each side of a (N, C, H, W) batch by ``pad`` >= 0 pixels of ``fill`` (one value or one per channel, in
    ``x``'s units); returns (N, C, H + 2 * pad, W + 2 * pad) of ``x``'s dtype."""
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
    """Pad by ``pad`` with ``fill`` (see ``pad_constant``), then take one random ``size`` x ``size`` crop per image.

    Offsets (top, left) are uniform integers in ``[0, 2 * pad + H - size]`` (likewise W), as PadIfNeeded >
    RandomCrop; one gather, no loop. ``generator``: on ``x.device`` (None: torch's default). Returns (N, C, size,
    size), or ``(crops, (top, left))`` ((N,) int64 each) with ``return_offsets``. ConfigError: the crop does not fit.
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
    """Flip each image of a (N, C, H, W) batch left-right with probability ``p``; with ``return_mask`` also the
    (N,) bool mask of flipped images."""
    _check_batch(x, "random_flip")
    mask = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    out = torch.where(mask[:, None, None, None], x.flip(3), x)
    return (out, mask) if return_mask else out


def cutout(x: torch.Tensor, size: int, fill: Fill, p: float = 0.5, generator: Optional[torch.Generator] = None,
           return_boxes: bool = False):
    """Fill one ``size`` x ``size`` square per image with ``fill``, with probability ``p`` (0 size: unchanged).

    Like CoarseDropout with one hole fully inside the image, its top-left corner uniform in ``[0, H - size] x
    [0, W - size]``. With ``return_boxes`` also ``(top, left, applied)``: (N,) int64, int64 and bool tensors.
    Raises ConfigError: the hole is larger than the image.
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
    """Random resized crop then random rotation, batched (bilinear); returns (N, C, size, size) float (pixel units).

    Per image: a box of area ``U(scale) * H * W`` and aspect ratio ``exp(U(log ratio))`` (whole pixels, clamped to
    the image) at a uniform integer position, resized to ``size``; then, with probability ``rotate_p``, a rotation
    by ``U(-rotate, rotate)`` degrees (0: none) about the centre, corners filled with ``fill``. Two ``grid_sample``
    calls as RandomResizedCrop > Rotate; unlike albumentations a too-large box is clamped, not redrawn.
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

    ``align_corners=False``; upscaling without antialiasing matches cv2's INTER_LINEAR used by ``A.Resize``,
    downscaling antialiases, as the CPU presets' ``A.Resize(area_for_downscale="image")`` (INTER_AREA) averages.
    """
    _check_batch(x, "resize")
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if not x.dtype.is_floating_point:
        x = x.float()
    down = size < x.shape[-2] or size < x.shape[-1]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=down)


def normalize(x: torch.Tensor, mean: Stats, std: Stats, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel for a (N, C, H, W) batch in pixel units; ``mean``/``std`` on the
    [0, 1] scale (sequences or tensors); computed in float32, returned as ``dtype``."""
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

