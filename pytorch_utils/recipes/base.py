"""Recipes as data: a :class:`Recipe` dataclass, a registry, and :func:`run_recipe` that trains one end to end.

A recipe names everything a seed system does (model, data, optimizer, schedule, augmentation, mixing, phases,
checkpoints, early stopping, TTA) as plain fields, so the CLI can override any field (``--set epochs=2``) and a
notebook can print the recipe it runs.
"""
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError
from pytorch_utils.registry import Registry
from pytorch_utils.train.callbacks import Phase, validate_phases
from pytorch_utils.train.schedules import ScheduleSpec


@dataclass
class LRFinderSpec:
    """How a recipe runs the LR range test: the sweep and the rule turning it into LR_max / LR_min."""

    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_iter: int = 100  # sweep length; find_lr skips the first 10% and last 5% of the curve
    suggestion: str = "steepest"  # or "valley"
    div: float = 10.0  # LR_min = LR_max / div
    # The sweep takes at most this many epochs' worth of the run's batches (but at least min_iter): a short smoke
    # run on a small subset is not dominated by a 100-batch sweep, while a full run gets the full num_iter.
    max_epochs: float = 2.0
    min_iter: int = 20  # with the 10 % / 5 % skips, 17 candidate points: enough for a smoke run, cheap on a CPU

    def iterations(self, steps_per_epoch: int) -> int:
        """Number of sweep iterations for a run with ``steps_per_epoch`` batches per epoch."""
        return int(min(self.num_iter, max(self.min_iter, self.max_epochs * steps_per_epoch)))


@dataclass
class Recipe:
    """A complete training recipe. Every field can be overridden with ``recipe.replace(**kw)`` or the CLI."""

    name: str = "default"
    description: str = ""
    # model and data
    model: str = "s10_resnet"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data: str = "cifar10"  # default data set; the CLI's --data overrides it
    num_classes: Optional[int] = None  # None: taken from the data
    train_limit: Optional[int] = None  # stratified subsets for quick runs
    test_limit: Optional[int] = None
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    scheduler: Optional[ScheduleSpec] = None
    lr_finder: Optional[LRFinderSpec] = None  # fills the scheduler's max_lr/min_lr from the range test
    grad_clip: Optional[float] = None
    accumulate_steps: int = 1  # one optimizer step per this many batches (an effective batch of N * batch_size)
    # augmentation, mixing, regularisation
    augmentation: str = "standard"  # train preset (see pytorch_utils.data.transforms.list_presets)
    augmentation_kwargs: Dict[str, Any] = field(default_factory=dict)
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_switch_prob: float = 0.5
    mix_prob: float = 1.0
    phases: List[Phase] = field(default_factory=list)  # epoch ranges changing scheduler/dropout/aug/mixing/size
    # evaluation and bookkeeping
    tta: Optional[str] = None  # None | "flip" | "flip_translate"
    ema_decay: Optional[float] = None
    early_stopping_patience: Optional[int] = None
    early_stopping_start: Optional[int] = None  # epochs before this one never count towards the patience
    monitor: str = "test_acc"
    keep_last: int = 5
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch and a new best are always saved)
    hub_repo: Optional[str] = None  # Hugging Face repo id; needs a token and a network
    hub_every: int = 10
    tensorboard: bool = False  # also log per-epoch scalars for TensorBoard (needs the optional tensorboard package)
    # speed
    loader: str = "auto"  # auto (GPU-resident on CUDA, DataLoader on CPU) | gpu | dataloader
    num_workers: Optional[int] = None
    amp: Optional[str] = "auto"  # None | auto | bf16 | fp16
    channels_last: bool = True  # only applied on CUDA
    compile: bool = False
    sync_bn: bool = True  # under torchrun on GPUs: BatchNorm statistics over the global batch, as on one GPU
    seed: int = 0

    def replace(self, **overrides) -> "Recipe":
        """A copy with fields replaced; unknown field names raise ConfigError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown recipe field(s) {unknown}; valid fields: {', '.join(sorted(names))}")
        nested = {"scheduler": ScheduleSpec, "lr_finder": LRFinderSpec}
        try:  # plain dicts (from JSON, a notebook) become the dataclasses the fields hold
            for key, cls in nested.items():
                if isinstance(overrides.get(key), dict):
                    overrides[key] = cls(**overrides[key])
            if isinstance(overrides.get("phases"), list):
                overrides["phases"] = [Phase(**p) if isinstance(p, dict) else p for p in overrides["phases"]]
        except TypeError as exc:
            raise ConfigError(f"recipe override: {exc}") from None
        return dataclasses.replace(copy.deepcopy(self), **overrides)

    def to_dict(self) -> Dict[str, Any]:
        """The recipe as plain data (JSON-serializable)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def validate(self) -> "Recipe":
        """Check field types and values that would otherwise fail late (after data loading); returns self.

        Raises:
            ConfigError: names the field, the bad value and what is expected.
        """
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _FIELD_TYPES.get(f.name))
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.accumulate_steps >= 1, "accumulate_steps must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.mixup_alpha >= 0 and self.cutmix_alpha >= 0, "mixup_alpha and cutmix_alpha must be >= 0"),
            (0 <= self.mix_switch_prob <= 1 and 0 <= self.mix_prob <= 1, "mix_switch_prob and mix_prob must be in [0, 1]"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must be None or in (0, 1)"),
            (self.keep_last >= 1, "keep_last must be >= 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.hub_every >= 0, "hub_every must be >= 0"),
            (self.early_stopping_patience is None or self.early_stopping_patience >= 1,
             "early_stopping_patience must be None or >= 1"),
            (self.train_limit is None or self.train_limit >= 1, "train_limit must be None or >= 1"),
            (self.test_limit is None or self.test_limit >= 1, "test_limit must be None or >= 1"),
            (self.num_classes is None or self.num_classes >= 2, "num_classes must be None or >= 2"),
            (self.num_workers is None or self.num_workers >= 0, "num_workers must be None or >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message} (recipe {self.name!r})")
        if "num_classes" in self.model_kwargs:
            raise ConfigError("model_kwargs must not hold num_classes: set the recipe field num_classes (or leave it "
                              "None to take the data set's class count)")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.loader not in ("auto", "gpu", "dataloader"):
            raise ConfigError(f"loader must be 'auto', 'gpu' or 'dataloader', got {self.loader!r}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if self.tta not in (None, "flip", "flip_translate"):
            raise ConfigError(f"tta must be None, 'flip' or 'flip_translate', got {self.tta!r}")
        if self.amp not in (None, "none", "auto", "bf16", "fp16"):
            raise ConfigError(f"amp must be None, 'auto', 'bf16' or 'fp16', got {self.amp!r}")
        if self.phases:
            validate_phases(self.phases)
        return self

    def with_lrs(self, lr_max: float, lr_min: float) -> "Recipe":
        """A copy without the LR finder whose schedule(s) use ``lr_max``/``lr_min`` as the finder would set them.

        ``run_recipe`` fills a finder's result in the same way (see :func:`schedule_with_lrs`); a benchmark that
        reuses one sweep for several runs calls this.
        """
        phases = [dataclasses.replace(p, scheduler=schedule_with_lrs(p.scheduler, lr_max, lr_min))
                  for p in self.phases]
        return self.replace(lr_finder=None, scheduler=schedule_with_lrs(self.scheduler, lr_max, lr_min),
                            phases=phases)

    def with_peak_lr(self, lr: float) -> "Recipe":
        """A copy that trains with ``lr`` as its peak LR, for a user who sets the LR by hand (the CLI's ``--lr``).

        The LR finder is switched off; a One Cycle / cyclic schedule gets ``max_lr=lr`` (and ``min_lr`` or
        ``base_lr`` = lr / the finder's ``div``, 10 by default); schedules (or phases) that restart from an ``lr``
        param start from ``lr``.
        """
        if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0):
            raise ConfigError(f"lr must be a positive number, got {lr!r}")
        div = self.lr_finder.div if self.lr_finder is not None else 10.0
        recipe = self.with_lrs(float(lr), lr / div)

        def start_at(spec: Optional[ScheduleSpec]) -> Optional[ScheduleSpec]:
            if spec is None or "lr" not in spec.params:
                return spec
            return ScheduleSpec(spec.name, {**spec.params, "lr": float(lr)})

        phases = [dataclasses.replace(p, scheduler=start_at(p.scheduler)) for p in recipe.phases]
        return recipe.replace(lr=float(lr), scheduler=start_at(recipe.scheduler), phases=phases)


def schedule_with_lrs(spec: Optional[ScheduleSpec], lr_max: float, lr_min: float) -> Optional[ScheduleSpec]:
    """``spec`` with an LR finder's result filled in: ``max_lr`` (One Cycle, cyclic, any spec with a max_lr), plus
    ``min_lr`` (linear One Cycle) or ``base_lr`` (cyclic) from ``lr_min``; other specs are returned unchanged."""
    if spec is None:
        return None
    params = dict(spec.params)
    if "max_lr" in params or spec.name in ("one_cycle_linear", "onecycle", "cyclic"):
        params["max_lr"] = lr_max
    if spec.name == "one_cycle_linear":
        params["min_lr"] = lr_min
    if spec.name == "cyclic":
        params["base_lr"] = lr_min
    return ScheduleSpec(spec.name, params)


MONITORS = ("test_acc", "test_loss", "train_acc", "train_loss")
# Field types checked by Recipe.validate (a CLI --set epochs=abc or a Python batch_size="32" fails here, by name).
_FIELD_TYPES = {
    "name": str, "model": str, "data": str, "optimizer": str, "augmentation": str, "loader": str, "monitor": str,
    "epochs": int, "batch_size": int, "keep_last": int, "checkpoint_every": int, "hub_every": int, "seed": int,
    "accumulate_steps": int,
    "num_classes": (int, type(None)), "train_limit": (int, type(None)), "test_limit": (int, type(None)),
    "num_workers": (int, type(None)), "early_stopping_patience": (int, type(None)),
    "early_stopping_start": (int, type(None)),
    "lr": float, "momentum": float, "weight_decay": float, "label_smoothing": float, "mixup_alpha": float,
    "cutmix_alpha": float, "mix_switch_prob": float, "mix_prob": float, "ema_decay": (float, type(None)),
    "grad_clip": (float, type(None)), "nesterov": bool, "channels_last": bool, "compile": bool, "sync_bn": bool,
    "tensorboard": bool,
    "model_kwargs": dict, "augmentation_kwargs": dict, "phases": list, "tta": (str, type(None)),
    "amp": (str, type(None)), "hub_repo": (str, type(None)),
    "scheduler": (ScheduleSpec, type(None)), "lr_finder": (LRFinderSpec, type(None)),
}


def _check_type(name: str, value: Any, expected) -> None:
    if expected is None:
        return
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in kinds:  # True is an int to Python, not an epoch count
        ok = False
    elif float in kinds and isinstance(value, int):
        ok = True  # lr=1 is a fine float
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
        raise ConfigError(f"recipe field {name!r} must be {names}, got {value!r} ({type(value).__name__})")


OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused kernels update all parameters in one launch on CUDA; the CPU keeps the default implementation.
    fused = {"fused": True} if params and params[0].is_cuda else {}
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay, **fused)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **fused)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **fused)
    raise ConfigError(f"unknown optimizer {recipe.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


_RECIPES: Registry[Recipe] = Registry("recipe")
register_recipe = _RECIPES.register


def get_recipe(name: str, **overrides) -> Recipe:
    """A fresh copy of the registered recipe ``name`` with ``overrides`` applied.

    Raises:
        UnknownNameError: unknown name (lists the valid ones). ConfigError: unknown override field.
    """
    recipe = _RECIPES.get(name)()
    return recipe.replace(**overrides) if overrides else recipe


def list_recipes() -> List[str]:
    """Names of the registered recipes, sorted."""
    return _RECIPES.names()


def parse_override(recipe: Recipe, text: str) -> Dict[str, Any]:
    """Parse one ``key=value`` CLI override against the recipe's field types.

    Values are read as JSON when they parse (numbers, true/false, null, lists, dicts), else as strings, so
    ``epochs=2``, ``tta=flip``, ``model_kwargs={"dropout": 0.1}`` and ``scheduler=null`` all work.

    Raises:
        ConfigError: not ``key=value``, an unknown field, text that is not valid JSON where the field needs a number,
            list or dict, or a nested dict with keys its type does not take.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    names = {f.name: f for f in dataclasses.fields(recipe)}
    if key not in names:
        raise ConfigError(f"unknown recipe field {key!r}; valid fields: {', '.join(sorted(names))}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        kinds = _FIELD_TYPES.get(key, str)
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if str not in kinds:
            raise ConfigError(f"--set {key}=...: {raw!r} is not valid JSON ({exc.msg}); e.g. --set "
                              f"'{key}={_example(key)}'") from None
        value = raw
    current = getattr(recipe, key)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    nested = {"scheduler": ScheduleSpec, "lr_finder": LRFinderSpec}
    try:
        if key in nested and isinstance(value, dict):
            value = nested[key](**value)
        if key == "phases" and isinstance(value, list):
            value = [Phase(**p) if isinstance(p, dict) else p for p in value]
    except TypeError as exc:
        raise ConfigError(f"--set {key}=...: {exc}") from None
    _check_type(key, value, _FIELD_TYPES.get(key))
    return {key: value}


def _example(key: str) -> str:
    return {"scheduler": '{"name": "cosine", "params": {}}', "model_kwargs": '{"dropout": 0.1}',
            "phases": '[{"start": 1, "end": 10}]', "lr_finder": '{"end_lr": 1.0}'}.get(key, "1")
