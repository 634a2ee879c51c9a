"""Augmentation presets: one registry of names (``list_presets()``); each preset declares its options once (a frozen
dataclass: types and ranges, checked by ``errors.check_fields``) that its CPU side (albumentations 2.x ops >
``Normalize`` > ``ToTensorV2`` in an ``AlbumentationsTransform``: HWC uint8 image -> float32 CHW tensor), its GPU side
(the batched ``gpu_ops`` equivalents) and the recipe check (``check_augmentation``) all read. Fills (padding, rotation
borders, cutout holes) are the data set mean: ~0 after normalization."""
from __future__ import annotations

import dataclasses
import importlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from pytorch_utils.data import gpu_ops as ops
from pytorch_utils.data.arrays import as_stats
from pytorch_utils.data.gpu_ops import Stats, pixel_fill
from pytorch_utils.errors import ConfigError, bounded, check_fields
from pytorch_utils.registry import Registry


class _Lazy:
    """A module imported on first attribute use: albumentations and OpenCV (slow to import) serve only the
    DataLoader path."""

    def __init__(self, name: str):
        self._name, self._module = name, None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


A, cv2, _albu_torch = _Lazy("albumentations"), _Lazy("cv2"), _Lazy("albumentations.pytorch")


def seed_compose(compose: A.BaseCompose, seed: Optional[int]) -> None:
    """Reseed ``compose`` in place so its whole pipeline draws from one stream seeded by ``seed`` (None: OS entropy):
    ``A.Compose(seed=s)`` (albumentations 2.0.8) seeds each transform alike, so flip and cutout would coincide."""
    compose.seed = seed
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


class AlbumentationsTransform:
    """One HWC uint8 image (numpy or PIL) -> float32 CHW tensor through ``compose`` (an ``A.Compose``); without a
    final ``ToTensorV2`` the HWC result is converted here (uint8 scaled to [0, 1])."""

    def __init__(self, compose: A.BaseCompose):
        self.compose = compose

    def __call__(self, image) -> torch.Tensor:
        if not isinstance(image, np.ndarray):  # PIL image
            image = np.asarray(image if getattr(image, "mode", "RGB") == "RGB" else image.convert("RGB"))
        out = self.compose(image=image)["image"]
        if isinstance(out, torch.Tensor):
            return out.float()
        out = np.ascontiguousarray(np.asarray(out).transpose(2, 0, 1))
        return torch.from_numpy(out).float().div_(255.0 if out.dtype == np.uint8 else 1.0)

    def set_random_seed(self, seed: Optional[int]) -> None:
        """Reseed the wrapped Compose (see ``seed_compose``); loaders call this in each worker and epoch."""
        seed_compose(self.compose, seed)

    def __repr__(self) -> str:
        names = [type(t).__name__ for t in getattr(self.compose, "transforms", [])]
        return f"AlbumentationsTransform({' > '.join(names)})"


# ---- each preset family's options, declared once -----------------------------------------------------------------

@dataclass(frozen=True)
class ResizeOptions:
    """Every preset's option: ``size``, the output side in pixels (images of another size are resized to it)."""
    size: int = bounded(32, ge=1)

    def __post_init__(self):
        check_fields(self, "augmentation option")


@dataclass(frozen=True)
class CropFlipOptions(ResizeOptions):
    """Pad by ``pad`` pixels of the fill > random ``size`` crop (0: neither) > horizontal flip (p=0.5) if ``flip``."""
    pad: int = bounded(4, ge=0)
    flip: bool = True


@dataclass(frozen=True)
class CutoutOptions(ResizeOptions):
    """One square hole of side ``cutout`` (0: none) filled with the mean, with probability ``cutout_p``."""
    cutout: int = bounded(8, ge=0)
    cutout_p: float = bounded(0.5, ge=0, le=1)

    def __post_init__(self):
        super().__post_init__()
        if self.cutout > self.size:
            raise ConfigError(f"augmentation option 'cutout' must be at most size={self.size}, got {self.cutout}")


@dataclass(frozen=True)
class StandardOptions(CropFlipOptions, CutoutOptions):
    """The S10 / standard CIFAR training augmentation: pad > random crop > flip > cutout."""


@dataclass(frozen=True)
class WrnOptions(CutoutOptions):
    """The WRN recipe's: random resized crop (area fraction in ``scale``, aspect 0.9-1.1) > rotation by up to
    ``rotate`` degrees (p=0.5, 0: none) > flip > cutout."""
    rotate: float = bounded(15.0, ge=0, le=180)
    scale: Sequence[float] = (0.75, 1.0)

    def __post_init__(self):
        super().__post_init__()
        s = self.scale
        if not (len(s) == 2 and all(isinstance(v, (int, float)) for v in s) and 0 < s[0] <= s[1] <= 1):
            raise ConfigError(f"augmentation option 'scale' must be two area fractions 0 < low <= high <= 1, got {s!r}")


# ---- the CPU side: albumentations ops before Normalize; ``fill`` is the mean in pixel units ------------------------

def _cpu_resize(o: ResizeOptions, fill) -> list:
    # A no-op at that size. INTER_AREA when shrinking averages pixels instead of skipping them (no aliasing).
    return [A.Resize(o.size, o.size, area_for_downscale="image")]


def _cpu_crop_flip(o: CropFlipOptions, fill) -> list:
    out = _cpu_resize(o, fill)
    if o.pad:
        out += [A.PadIfNeeded(min_height=o.size + 2 * o.pad, min_width=o.size + 2 * o.pad,
                              border_mode=cv2.BORDER_CONSTANT, fill=fill), A.RandomCrop(height=o.size, width=o.size)]
    return out + [A.HorizontalFlip(p=0.5)] if o.flip else out


def _cpu_cutout(o: CutoutOptions, fill) -> list:
    hole = (o.cutout, o.cutout)
    return [A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=hole, hole_width_range=hole, fill=fill,
                            p=o.cutout_p)] if o.cutout and o.cutout_p > 0 else []


def _cpu_wrn(o: WrnOptions, fill) -> list:
    out = [A.RandomResizedCrop(size=(o.size, o.size), scale=tuple(o.scale), ratio=(0.9, 1.1))]
    if o.rotate:
        out.append(A.Rotate(limit=(-o.rotate, o.rotate), border_mode=cv2.BORDER_CONSTANT, fill=fill, p=0.5))
    return out + [A.HorizontalFlip(p=0.5)] + _cpu_cutout(o, fill)


# ---- the GPU side: pixel batch (N, 3, H, W), options, fill (3,) on the batch's device, generator -------------------

def _gpu_crop_flip(x: torch.Tensor, o: CropFlipOptions, fill: torch.Tensor, g: Optional[torch.Generator]):
    x = ops.resize(x, o.size)
    if o.pad:  # pad 0 would be an identity crop
        x = ops.random_crop_with_padding(x, o.size, o.pad, fill, g)
    return ops.random_flip(x, 0.5, g) if o.flip else x


def _gpu_cutout(x: torch.Tensor, o: CutoutOptions, fill: torch.Tensor, g: Optional[torch.Generator]):
    return ops.cutout(x, o.cutout, fill, o.cutout_p, g) if o.cutout and o.cutout_p > 0 else x


def _gpu_wrn(x: torch.Tensor, o: WrnOptions, fill: torch.Tensor, g: Optional[torch.Generator]):
    # The resized crop resizes too, so progressive sizes need no separate resize.
    x = ops.random_resized_crop_rotate(x, o.size, fill, scale=o.scale, rotate=o.rotate, generator=g)
    return _gpu_cutout(ops.random_flip(x, 0.5, g), o, fill, g)


class Augmentation(NamedTuple):
    """A preset: its ``options`` dataclass, ``cpu(options, fill) -> albumentations ops`` and ``gpu(pixel batch,
    options, fill, generator) -> (N, 3, size, size)`` in pixel units; None where a side is missing."""
    options: type
    cpu: Optional[Callable[..., list]]
    gpu: Optional[Callable[..., torch.Tensor]]


_AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation preset")


def register_augmentation(name: str, options: type = ResizeOptions, cpu: Optional[Callable[..., list]] = None,
                          gpu: Optional[Callable[..., torch.Tensor]] = None) -> None:
    """Add a preset under ``name`` to the one list of augmentation names; ValueError if the name is taken."""
    _AUGMENTATIONS.register(Augmentation(options, cpu, gpu), name=name)


register_augmentation("test", ResizeOptions, _cpu_resize, lambda x, o, fill, g: ops.resize(x, o.size))
register_augmentation("standard", StandardOptions, lambda o, fill: _cpu_crop_flip(o, fill) + _cpu_cutout(o, fill),
                      lambda x, o, fill, g: _gpu_cutout(_gpu_crop_flip(x, o, fill, g), o, fill, g))
register_augmentation("standard_no_cutout", CropFlipOptions, _cpu_crop_flip, _gpu_crop_flip)
register_augmentation("wrn", WrnOptions, _cpu_wrn, _gpu_wrn)
register_augmentation("reduced", CropFlipOptions, _cpu_crop_flip, _gpu_crop_flip)


def list_presets() -> List[str]:
    """Names of the augmentation presets (the one list: CLI choices and ``Recipe.validate`` read it), sorted."""
    return _AUGMENTATIONS.names()


def get_augmentation(name: str, side: str) -> Callable:
    """The CPU ops builder (``side="cpu"``) or GPU pipeline (``side="gpu"``) of preset ``name``; UnknownNameError, or
    ConfigError naming the presets that have that side."""
    found = getattr(_AUGMENTATIONS.get(name), side)
    if found is None:
        have = [n for n in list_presets() if getattr(_AUGMENTATIONS.get(n), side) is not None]
        where = "GPU-resident loader (loader='gpu')" if side == "gpu" else "DataLoader (loader='dataloader')"
        raise ConfigError(f"augmentation preset {name!r} has no {side.upper()} pipeline, so the {where} cannot "
                          f"use it; pick another loader, or one of {', '.join(have)}")
    return found


def augmentation_options(preset: str, options: Dict[str, Any], strict: bool = True) -> ResizeOptions:
    """Preset ``preset``'s options object built from ``options`` (types and declared ranges checked). An option the
    preset does not declare is a ConfigError naming the valid ones when ``strict``, else dropped (the loaders keep
    options across preset switches, each preset taking its own). UnknownNameError: unknown ``preset`` (listing the
    presets); ConfigError: a value of the wrong type or out of its declared range."""
    declared = _AUGMENTATIONS.get(preset).options
    valid = [f.name for f in dataclasses.fields(declared)]
    unknown = sorted(set(options) - set(valid))
    if unknown and strict:
        raise ConfigError(f"augmentation {preset!r} takes no option {', '.join(map(repr, unknown))}; its options: "
                          f"{', '.join(valid)}")
    return declared(**{k: v for k, v in options.items() if k in valid})


# The recipe door's check of ``augmentation`` and ``augmentation_kwargs`` (``size`` included), before any data loads.
check_augmentation = augmentation_options


def get_preset(name: str, mean: Stats, std: Stats, size: int = 32, seed: Optional[int] = None,
               **options) -> AlbumentationsTransform:
    """The CPU transform of preset ``name`` (``list_presets()``): its ops at output side ``size`` > Normalize >
    float32 (3, size, size). ``mean``/``std``: [0, 1] scale (the mean is also the fill colour); ``seed``: None is
    random; ``options``: the preset's (its options class, e.g. ``StandardOptions``). UnknownNameError, or
    ConfigError (no CPU side, an option it does not take, bad values)."""
    opts = augmentation_options(name, {**options, "size": size})
    mean, std = as_stats(mean, "mean", ConfigError), as_stats(std, "std", ConfigError, positive=True)
    compose = A.Compose(get_augmentation(name, "cpu")(opts, pixel_fill(mean)) + [
        A.Normalize(mean=mean, std=std, max_pixel_value=255.0), _albu_torch.ToTensorV2()])
    seed_compose(compose, seed)
    return AlbumentationsTransform(compose)


def test_preset(mean: Stats, std: Stats, size: int = 32) -> AlbumentationsTransform:
    """Evaluation transform ("test"): resize to ``size`` (a no-op at that size) > normalize. Deterministic."""
    return get_preset("test", mean, std, size=size, seed=0)


test_preset.__test__ = False  # its name starts with "test"; keep pytest from collecting it when imported
