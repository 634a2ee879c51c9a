"""Batched augmentations for the GPU-resident loader: pure functions of a (N, C, H, W) tensor and a
``torch.Generator``, each reproducing in distribution the albumentations op its docstring names (the presets of
``transforms``). Images stay in pixel units (0-255) until the loader normalizes them; fills are the data set mean in
pixel units, rounded as the CPU presets do. The draws differ from albumentations', so GPU and CPU runs differ.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Stats = Sequence[float]
Fill = Union[float, Sequence[float], torch.Tensor]


def _fill_tensor(fill: Fill, x: torch.Tensor) -> torch.Tensor:
    """One fill value or one per channel as a (1, C or 1, 1, 1) tensor of ``x``'s dtype (rounded for integer dtypes);
    a tensor already on ``x.device`` is used in place (building it from numbers would stall the GPU every batch)."""
    f = torch.as_tensor(fill, device=x.device).float()  # float32: MPS has no float64
    return (f if x.dtype.is_floating_point else f.round()).to(x.dtype).view(1, -1, 1, 1)


def random_crop_with_padding(x: torch.Tensor, size: int, pad: int, fill: Fill, generator: Optional[torch.Generator]
                             = None, return_offsets: bool = False):
    """Pad each side by ``pad`` pixels of ``fill`` (one value or one per channel, in ``x``'s units), then take one
    random ``size`` x ``size`` crop per image (it must fit) at offsets (top, left) uniform in ``[0, 2 * pad + H -
    size]`` (likewise W), as PadIfNeeded > RandomCrop; one gather, no loop. ``generator``: on ``x.device`` (None:
    torch's default). Returns (N, C, size, size), or ``(crops, (top, left))`` ((N,) int64 each) with
    ``return_offsets``."""
    n, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    assert 1 <= size <= min(hp, wp) and pad >= 0, f"no {size}x{size} crop in {h}x{w} images padded by {pad}"
    # F.pad only takes one scalar for all channels: fill a fresh buffer and copy the images into its middle.
    padded = x.new_empty((n, c, hp, wp))
    padded[:] = _fill_tensor(fill, x)
    padded[:, :, pad:pad + h, pad:pad + w] = x
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
    """Flip each image of a (N, C, H, W) batch left-right with probability ``p`` (HorizontalFlip(p)); with
    ``return_mask`` also the (N,) bool mask of flipped images."""
    mask = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    out = torch.where(mask[:, None, None, None], x.flip(3), x)
    return (out, mask) if return_mask else out


def cutout(x: torch.Tensor, size: int, fill: Fill, p: float = 0.5, generator: Optional[torch.Generator] = None,
           return_boxes: bool = False):
    """Fill one ``size`` x ``size`` square per image with ``fill``, with probability ``p`` (0 size: unchanged), as
    CoarseDropout with one hole that must fit inside the image, its top-left corner uniform in ``[0, H - size] x
    [0, W - size]``. With ``return_boxes`` also ``(top, left, applied)``: (N,) int64, int64 and bool tensors."""
    n, _, h, w = x.shape
    assert 0 <= size <= min(h, w), f"a {size}x{size} cutout hole does not fit {h}x{w} images"
    # Always draw, so the random stream (and every later augmentation) does not depend on p or size.
    top = torch.randint(0, h - size + 1, (n,), generator=generator, device=x.device)
    left = torch.randint(0, w - size + 1, (n,), generator=generator, device=x.device)
    applied = (torch.rand(n, generator=generator, device=x.device) < p) & (size > 0)
    ys = torch.arange(h, device=x.device)[None, :] - top[:, None]  # (N, H): row offset inside the hole
    xs = torch.arange(w, device=x.device)[None, :] - left[:, None]  # (N, W)
    mask = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]  # (N, H, W)
    out = torch.where((mask & applied[:, None, None])[:, None], _fill_tensor(fill, x), x)
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
    n, _, h, w = x.shape
    if not x.dtype.is_floating_point:
        x = x.float()
    u = torch.rand(6, n, generator=generator, device=x.device, dtype=torch.float32)
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
    theta = torch.stack([bw / w, zero, (2 * x0 + bw) / w - 1, zero, bh / h, (2 * y0 + bh) / h - 1], 1).view(n, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if not rotate:
        return out
    # Stage 2, the rotation about the centre of the crop. A separate resample (not folded into stage 1) so that,
    # as with A.Rotate, the uncovered corners get the fill colour rather than image content from outside the box.
    angle = torch.deg2rad((2 * u[4] - 1) * rotate) * (u[5] < rotate_p)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([cos, -sin, zero, sin, cos, zero], 1).view(n, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], size, size], align_corners=False)
    fill_t = _fill_tensor(fill, out)
    # grid_sample pads with zeros: sample (out - fill) and add fill back, so the border becomes the fill colour.
    return F.grid_sample(out - fill_t, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill_t


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a (N, C, H, W) batch to ``size`` x ``size`` (float32 out for integer input),
    ``align_corners=False``; upscaling without antialiasing matches cv2's INTER_LINEAR used by ``A.Resize``,
    downscaling antialiases, as the CPU presets' ``A.Resize(area_for_downscale="image")`` (INTER_AREA) averages."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if not x.dtype.is_floating_point:
        x = x.float()
    down = size < x.shape[-2] or size < x.shape[-1]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=down)


def pixel_fill(mean: Stats) -> Tuple[int, int, int]:
    """The data set mean in pixel units, rounded like the CPU presets' fill colour (``round(m * 255)``)."""
    return tuple(int(round(float(m) * 255)) for m in mean)

