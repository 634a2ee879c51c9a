"""Augmentation presets: one registry of names (``list_presets()``), each with a CPU side (albumentations 2.x ops >
``Normalize`` > ``ToTensorV2`` in an ``AlbumentationsTransform``: HWC uint8 image -> float32 CHW tensor) and a GPU
side (the batched ``gpu_ops`` equivalents). Fills (padding, rotation borders, cutout holes) are the data set mean:
~0 after normalization."""
from __future__ import annotations

import importlib
import inspect
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from pytorch_utils.data import gpu_ops as ops
from pytorch_utils.data.gpu_ops import pixel_fill
from pytorch_utils.errors import ConfigError
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

Stats = Sequence[float]


def seed_compose(compose: A.BaseCompose, seed: Optional[int]) -> None:
    """Reseed ``compose`` in place so its whole pipeline draws from one stream seeded by ``seed`` (None: OS entropy):
    ``A.Compose(seed=s)`` (albumentations 2.0.8) seeds each transform alike, so flip and cutout would coincide."""
    compose.seed = seed
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


class AlbumentationsTransform:
    """One HWC uint8 image (numpy or PIL) -> float32 CHW tensor through ``compose`` (an ``A.Compose``); without a
    final ``ToTensorV2`` the HWC result is converted here (uint8 scaled to [0, 1])."""

    def __init__(self, compose: A.BaseCompose):
        if not callable(compose):
            raise ConfigError(f"AlbumentationsTransform needs an albumentations Compose, got {type(compose).__name__}")
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


def _check(mean: Stats, std: Stats, size: int) -> None:
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"mean and std must be 3 per-channel floats on the [0, 1] scale, got {mean!r} and {std!r}; "
                          "use ds.mean/ds.std or pytorch_utils.data.compute_mean_std")
    if any(float(s) <= 0 for s in std):
        raise ConfigError(f"std must be positive in every channel, got {tuple(std)}")
    if any(float(m) > 1.5 for m in mean):
        raise ConfigError(f"mean {tuple(mean)} looks like 0-255 values; pass per-channel means on the [0, 1] scale")
    if int(size) != size or size < 1:
        raise ConfigError(f"size must be a positive integer, got {size!r}")


def _finish(ops, mean: Stats, std: Stats, seed: Optional[int]) -> AlbumentationsTransform:
    ops = list(ops) + [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), _albu_torch.ToTensorV2()]
    compose = A.Compose(ops)
    seed_compose(compose, seed)
    return AlbumentationsTransform(compose)


def _resize(size: int):
    # Any input size reaches ``size`` (a no-op when it already is): data of another size, progressive resizing.
    # INTER_AREA when shrinking averages pixels instead of skipping them (no aliasing).
    return [A.Resize(size, size, area_for_downscale="image")]


def _cutout(cutout: int, size: int, fill, p: float):
    if int(cutout) != cutout or cutout < 0 or cutout > size:
        raise ConfigError(f"cutout must be an integer hole side in [0, size={size}], got {cutout!r}; 0 disables it")
    if cutout == 0 or p <= 0:
        return []
    return [A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(cutout, cutout),
                            hole_width_range=(cutout, cutout), fill=fill, p=p)]


def train_preset(mean: Stats, std: Stats, size: int = 32, pad: int = 4, flip: bool = True, cutout: int = 8,
                 cutout_p: float = 0.5, seed: Optional[int] = None) -> AlbumentationsTransform:
    """The S10 / standard CIFAR training augmentation: pad > random crop > flip (p=0.5) > one square ``cutout`` hole
    (0: none; probability ``cutout_p``) > normalize, to float32 (3, size, size). ``mean``/``std``: [0, 1] scale (also
    the fill colour); other sizes are resized to ``size`` first; ``seed``: None is random. ConfigError: bad values.
    """
    _check(mean, std, size)
    if int(pad) != pad or pad < 0:
        raise ConfigError(f"pad must be a non-negative integer, got {pad!r}")
    fill = pixel_fill(mean)  # the ints cv2 border/fill arguments take
    ops = _resize(size)
    if pad:
        ops.append(A.PadIfNeeded(min_height=size + 2 * pad, min_width=size + 2 * pad,
                                 border_mode=cv2.BORDER_CONSTANT, fill=fill))
        ops.append(A.RandomCrop(height=size, width=size))
    if flip:
        ops.append(A.HorizontalFlip(p=0.5))
    ops += _cutout(cutout, size, fill, cutout_p)
    return _finish(ops, mean, std, seed)


def test_preset(mean: Stats, std: Stats, size: int = 32) -> AlbumentationsTransform:
    """Evaluation transform: resize to ``size`` (a no-op at that size) > normalize > float32 tensor. Deterministic."""
    _check(mean, std, size)
    return _finish(_resize(size), mean, std, seed=0)


test_preset.__test__ = False  # its name starts with "test"; keep pytest from collecting it when imported


def wrn_preset(mean: Stats, std: Stats, size: int = 32, rotate: float = 15, cutout: int = 8,
               scale: Tuple[float, float] = (0.75, 1.0), cutout_p: float = 0.5,
               seed: Optional[int] = None) -> AlbumentationsTransform:
    """The WRN-28-10 recipe augmentation: random resized crop (area fraction ``scale``; also resizes to ``size``) >
    rotation by up to ``rotate`` degrees (p=0.5, mean fill; 0: none) > flip > cutout > normalize; rest: train_preset."""
    _check(mean, std, size)
    fill = pixel_fill(mean)  # the ints cv2 border/fill arguments take
    ops = [A.RandomResizedCrop(size=(size, size), scale=tuple(scale), ratio=(0.9, 1.1))]
    if rotate:
        ops.append(A.Rotate(limit=(-abs(rotate), abs(rotate)), border_mode=cv2.BORDER_CONSTANT, fill=fill, p=0.5))
    ops.append(A.HorizontalFlip(p=0.5))
    ops += _cutout(cutout, size, fill, cutout_p)
    return _finish(ops, mean, std, seed)


def reduced_preset(mean: Stats, std: Stats, size: int = 32, pad: int = 4,
                   seed: Optional[int] = None) -> AlbumentationsTransform:
    """Milder training augmentation (S8 phase 2; also "standard_no_cutout"): pad > random crop > flip > normalize."""
    return train_preset(mean, std, size=size, pad=pad, flip=True, cutout=0, seed=seed)


def _test(mean: Stats, std: Stats, size: int = 32, seed: Optional[int] = None) -> AlbumentationsTransform:
    return test_preset(mean, std, size=size)  # deterministic: the seed has nothing to draw


@dataclass(frozen=True)
class GPUAugment:
    """Options of the GPU pipelines (names and defaults: the CPU presets' keywords); ``fill``: the mean in pixel
    units as a (3,) float tensor on the batch's device (no host copy per batch)."""
    size: int
    fill: torch.Tensor
    pad: int = 4
    cutout: int = 8
    cutout_p: float = 0.5
    rotate: float = 15.0
    scale: Tuple[float, float] = (0.75, 1.0)


GPUPipeline = Callable[[torch.Tensor, GPUAugment, Optional[torch.Generator]], torch.Tensor]


def _gpu_test(x: torch.Tensor, o: GPUAugment, g: Optional[torch.Generator]) -> torch.Tensor:
    return ops.resize(x, o.size)


def _gpu_crop_flip(x: torch.Tensor, o: GPUAugment, g: Optional[torch.Generator]) -> torch.Tensor:
    x = ops.resize(x, o.size)
    if o.pad:  # pad 0 would be an identity crop
        x = ops.random_crop_with_padding(x, o.size, o.pad, o.fill, g)
    return ops.random_flip(x, 0.5, g)


def _gpu_standard(x: torch.Tensor, o: GPUAugment, g: Optional[torch.Generator]) -> torch.Tensor:
    x = _gpu_crop_flip(x, o, g)
    return ops.cutout(x, o.cutout, o.fill, o.cutout_p, g) if o.cutout and o.cutout_p > 0 else x


def _gpu_wrn(x: torch.Tensor, o: GPUAugment, g: Optional[torch.Generator]) -> torch.Tensor:
    # The resized crop resizes too, so progressive sizes need no separate resize.
    x = ops.random_resized_crop_rotate(x, o.size, o.fill, scale=o.scale, rotate=o.rotate, generator=g)
    x = ops.random_flip(x, 0.5, g)
    return ops.cutout(x, o.cutout, o.fill, o.cutout_p, g) if o.cutout else x


class Augmentation(NamedTuple):
    """A preset's ``cpu(mean, std, size=, seed=, **options) -> AlbumentationsTransform`` and ``gpu(pixel batch
    (N, 3, H, W), GPUAugment, generator) -> (N, 3, size, size)``; None where a side is missing."""
    cpu: Optional[Callable[..., AlbumentationsTransform]]
    gpu: Optional[GPUPipeline]


_AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation preset")


def register_augmentation(name: str, cpu: Optional[Callable[..., AlbumentationsTransform]] = None,
                          gpu: Optional[GPUPipeline] = None) -> None:
    """Add a preset under ``name`` to the one list of augmentation names; ValueError if the name is taken."""
    _AUGMENTATIONS.register(Augmentation(cpu, gpu), name=name)


register_augmentation("test", _test, _gpu_test)
register_augmentation("standard", train_preset, _gpu_standard)
register_augmentation("standard_no_cutout", reduced_preset, _gpu_crop_flip)
register_augmentation("wrn", wrn_preset, _gpu_wrn)
register_augmentation("reduced", reduced_preset, _gpu_crop_flip)


def get_augmentation(name: str, side: str) -> Callable:
    """The CPU builder (``side="cpu"``) or GPU pipeline (``side="gpu"``) of preset ``name``; UnknownNameError, or
    ConfigError naming the presets that have that side."""
    assert side in ("cpu", "gpu"), side
    found = getattr(_AUGMENTATIONS.get(name), side)
    if found is None:
        have = [n for n in list_presets() if getattr(_AUGMENTATIONS.get(n), side) is not None]
        where = "GPU-resident loader (loader='gpu')" if side == "gpu" else "DataLoader (loader='dataloader')"
        raise ConfigError(f"augmentation preset {name!r} has no {side.upper()} pipeline, so the {where} cannot "
                          f"use it; pick another loader, or one of {', '.join(have)}")
    return found


def preset_options(name: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """The subset of ``options`` (e.g. a recipe's ``augmentation_kwargs``) that the CPU preset ``name`` takes, so
    one set of options can serve presets that take different ones (``cutout`` means nothing to "test")."""
    params = inspect.signature(get_augmentation(name, "cpu")).parameters
    return {k: v for k, v in options.items() if k in params and k not in ("mean", "std", "size", "seed")}


def get_preset(name: str, mean: Stats, std: Stats, size: int = 32, seed: Optional[int] = None,
               **kw) -> AlbumentationsTransform:
    """The CPU transform of preset ``name`` (``list_presets()``); arguments as ``train_preset``, ``**kw``: preset
    options. UnknownNameError, or ConfigError (no CPU side, an option it does not take, bad values)."""
    builder = get_augmentation(name, "cpu")
    try:
        return builder(mean, std, size=size, seed=seed, **kw)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise ConfigError(f"preset {name!r} does not take {sorted(kw)}: {exc}") from None


def list_presets() -> List[str]:
    """Names of the augmentation presets (the one list: CLI choices and ``Recipe.validate`` read it), sorted."""
    return _AUGMENTATIONS.names()
