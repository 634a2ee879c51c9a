"""Recipes as data: the :class:`Recipe` dataclass (every setting of a seed system as a plain field the CLI can
override) and its registry."""
import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, UnknownNameError
from pytorch_utils.registry import Registry
from pytorch_utils.train.callbacks import Phase, validate_phases
from pytorch_utils.train.schedules import SCHEDULE_NAMES, ScheduleSpec
from pytorch_utils.train.tta import TTAMode
from pytorch_utils.utils import AmpMode

# The sets of names a recipe field takes, each listed once (the CLI's choices and Recipe.validate read them).
LoaderKind = Literal["auto", "gpu", "dataloader"]  # auto: GPU-resident on CUDA, DataLoader on the CPU
LOADER_KINDS = typing.get_args(LoaderKind)
Monitor = Literal["test_acc", "test_loss", "train_acc", "train_loss"]


@dataclass
class LRFinderSpec:
    """The LR range test of a recipe: the sweep and the rule turning it into LR_max / LR_min."""

    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_iter: int = 100  # sweep length; find_lr skips the first 10% and last 5% of the curve
    suggestion: str = "steepest"  # or "valley"
    div: float = 10.0  # LR_min = LR_max / div
    max_epochs: float = 2.0  # the sweep takes at most this many epochs' batches: a smoke run is not all sweep
    min_iter: int = 20  # with the 10 % / 5 % skips, 17 candidate points: enough for a smoke run, cheap on a CPU

    def iterations(self, steps_per_epoch: int) -> int:
        return int(min(self.num_iter, max(self.min_iter, self.max_epochs * steps_per_epoch)))


@dataclass
class Recipe:
    """A complete training recipe. Every field can be overridden with ``recipe.replace(**kw)`` or the CLI."""

    name: str = "default"
    description: str = ""
    model: str = "s10_resnet"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data: str = "cifar10"  # default data set; the CLI's --data overrides it
    num_classes: Optional[int] = None  # None: taken from the data
    train_limit: Optional[int] = None  # stratified subsets for quick runs
    test_limit: Optional[int] = None
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "sgd"  # a name in OPTIMIZERS: sgd | adam | adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    scheduler: Optional[ScheduleSpec] = None
    lr_finder: Optional[LRFinderSpec] = None  # fills the scheduler's max_lr/min_lr from the range test
    grad_clip: Optional[float] = None
    accumulate_steps: int = 1  # one optimizer step per this many batches (an effective batch of N * batch_size)
    augmentation: str = "standard"  # train preset (see pytorch_utils.data.transforms.list_presets)
    augmentation_kwargs: Dict[str, Any] = field(default_factory=dict)
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_switch_prob: float = 0.5
    mix_prob: float = 1.0
    phases: List[Phase] = field(default_factory=list)  # epoch ranges changing scheduler/dropout/aug/mixing/size
    tta: Optional[TTAMode] = None  # None or a name in train.tta.TTA_MODES
    ema_decay: Optional[float] = None
    early_stopping_patience: Optional[int] = None
    early_stopping_start: Optional[int] = None  # epochs before this one never count towards the patience
    monitor: Monitor = "test_acc"
    keep_last: int = 5
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch and a new best are always saved)
    hub_repo: Optional[str] = None  # Hugging Face repo id; needs a token and a network
    hub_every: int = 10
    tensorboard: bool = False  # also log per-epoch scalars for TensorBoard (needs the optional tensorboard package)
    loader: LoaderKind = "auto"  # auto (GPU-resident on CUDA, DataLoader on CPU) | gpu | dataloader
    num_workers: Optional[int] = None
    amp: Optional[AmpMode] = "auto"  # None or a name in utils.AMP_MODES: none | auto | bf16 | fp16
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
        try:
            overrides = {key: _from_plain(key, value) for key, value in overrides.items()}
        except TypeError as exc:
            raise ConfigError(f"recipe override: {exc}") from None
        return dataclasses.replace(copy.deepcopy(self), **overrides)

    def to_dict(self) -> Dict[str, Any]:
        """The recipe as plain data (JSON-serializable)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def validate(self) -> "Recipe":
        """Check every field's type, range and name before any work; returns self.

        Raises ConfigError (the field, the bad value, what is expected) or UnknownNameError (lists the valid names).
        """
        check_fields(self)
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.accumulate_steps >= 1, "accumulate_steps must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.mixup_alpha >= 0 and self.cutmix_alpha >= 0, "mixup_alpha and cutmix_alpha must be >= 0"),
            (0 <= self.mix_switch_prob <= 1 and 0 <= self.mix_prob <= 1,
             "mix_switch_prob and mix_prob must be in [0, 1]"),
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
        check_names(self)  # first: a misspelled name is named with its place (phases[1].scheduler)
        if self.phases:
            validate_phases(self.phases)
        return self

    def with_lrs(self, lr_max: float, lr_min: float) -> "Recipe":
        """A copy without the LR finder, its schedule(s) filled as the finder would (see :func:`schedule_with_lrs`)."""
        phases = [dataclasses.replace(p, scheduler=schedule_with_lrs(p.scheduler, lr_max, lr_min))
                  for p in self.phases]
        return self.replace(lr_finder=None, scheduler=schedule_with_lrs(self.scheduler, lr_max, lr_min),
                            phases=phases)

    def with_peak_lr(self, lr: float) -> "Recipe":
        """A copy with ``lr`` as its peak LR set by hand (the CLI's ``--lr``): no LR finder, ``max_lr=lr`` and
        ``min_lr``/``base_lr`` = lr / the finder's ``div`` (10 by default); schedules with an ``lr`` start there."""
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
    """``spec`` with an LR finder's ``max_lr`` (One Cycle, cyclic, any spec with one) and ``min_lr`` (linear One
    Cycle) or ``base_lr`` (cyclic) filled in."""
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


_NESTED = {"scheduler": ScheduleSpec, "lr_finder": LRFinderSpec}


def _from_plain(key: str, value: Any) -> Any:
    """A field value from plain data (JSON, a notebook): dicts become the dataclasses the fields hold."""
    if key in _NESTED and isinstance(value, dict):
        return _NESTED[key](**value)
    if key == "phases" and isinstance(value, list):
        return [_as_phase(p) for p in value]
    return value


def _as_phase(p: Union[Phase, Dict[str, Any]]) -> Phase:
    phase = Phase(**p) if isinstance(p, dict) else p
    if isinstance(phase.scheduler, dict):
        phase = dataclasses.replace(phase, scheduler=ScheduleSpec(**phase.scheduler))
    return phase


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if origin in (list, dict):
        return isinstance(value, origin)
    if isinstance(value, bool) and hint is not bool:  # True is an int to Python, not an epoch count
        return False
    if hint is float:
        return isinstance(value, (int, float))  # lr=1 is a fine float
    return isinstance(value, hint)


def _takes_text(hint: Any) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    return any(a is str or typing.get_origin(a) is Literal for a in args)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Union:
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(origin or hint, "__name__", str(hint))


def check_fields(obj: Any, where: str = "recipe field") -> None:
    """Check each field of the dataclass ``obj`` (and the dataclasses it holds) against its annotation.

    Raises ConfigError: ``recipe field 'epochs' must be int, got 'abc' (str)``.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        if not _type_ok(value, hint):
            if any(typing.get_origin(a) is Literal for a in (hint, *typing.get_args(hint))):
                raise ConfigError(f"{f.name} must be {_describe(hint)}, got {value!r}")
            raise ConfigError(f"{where} {f.name!r} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                check_fields(item, f"{f.name}[{i}] field" if isinstance(value, list) else f"{f.name} field")


def check_names(recipe: "Recipe") -> None:
    """Check the model, optimizer, scheduler and augmentation names (also inside phases); raises UnknownNameError
    naming the field (``phases[1].scheduler``), the bad name and the valid ones."""
    from pytorch_utils.data.transforms import list_presets
    from pytorch_utils.models import list_models

    wanted = [("model", recipe.model, list_models()), ("optimizer", recipe.optimizer, OPTIMIZERS.names()),
              ("augmentation", recipe.augmentation, list_presets())]
    if recipe.scheduler is not None:
        wanted.append(("scheduler", recipe.scheduler.name, SCHEDULE_NAMES))
    for i, phase in enumerate(recipe.phases):
        if phase.scheduler is not None:
            wanted.append((f"phases[{i}].scheduler", phase.scheduler.name, SCHEDULE_NAMES))
        if phase.augmentation is not None:
            wanted.append((f"phases[{i}].augmentation", phase.augmentation, list_presets()))
    for where, name, valid in wanted:
        if name not in valid:
            kind = where.split(".")[-1]
            place = f"{where} of recipe {recipe.name!r}" if kind != where else f"recipe {recipe.name!r}"
            raise UnknownNameError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)} ({place})")


# name -> builder(params, recipe, fused_kwargs): the one list of optimizer names.
OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
OPTIMIZERS.register(lambda params, r, kw: torch.optim.SGD(
    params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov, weight_decay=r.weight_decay, **kw), name="sgd")
OPTIMIZERS.register(lambda params, r, kw: torch.optim.Adam(
    params, lr=r.lr, weight_decay=r.weight_decay, **kw), name="adam")
OPTIMIZERS.register(lambda params, r, kw: torch.optim.AdamW(
    params, lr=r.lr, weight_decay=r.weight_decay, **kw), name="adamw")


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer (a name in :data:`OPTIMIZERS`) over ``model``'s trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused kernels update all parameters in one launch on CUDA; the CPU keeps the default implementation.
    fused = {"fused": True} if params and params[0].is_cuda else {}
    return OPTIMIZERS.get(recipe.optimizer)(params, recipe, fused)


_RECIPES: Registry[Recipe] = Registry("recipe")
register_recipe = _RECIPES.register


def get_recipe(name: str, **overrides) -> Recipe:
    """A fresh copy of the registered recipe ``name`` with ``overrides`` applied."""
    recipe = _RECIPES.get(name)()
    return recipe.replace(**overrides) if overrides else recipe


def list_recipes() -> List[str]:
    """Names of the registered recipes, sorted."""
    return _RECIPES.names()


_EXAMPLES = {"scheduler": '{"name": "cosine", "params": {}}', "model_kwargs": '{"dropout": 0.1}',
             "phases": '[{"start": 1, "end": 10}]', "lr_finder": '{"end_lr": 1.0}'}


def parse_override(recipe: Recipe, text: str) -> Dict[str, Any]:
    """Parse one ``key=value`` CLI override: the value as JSON when it parses, else as text for a field that takes
    text (``epochs=2``, ``tta=flip``, ``scheduler=null``). Raises ConfigError naming what does not fit."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    names = {f.name: f for f in dataclasses.fields(recipe)}
    if key not in names:
        raise ConfigError(f"unknown recipe field {key!r}; valid fields: {', '.join(sorted(names))}")
    hint = typing.get_type_hints(Recipe)[key]
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        if not _takes_text(hint):  # a field that takes text keeps the raw text (checked below)
            raise ConfigError(f"override {text!r}: {raw!r} is not valid JSON ({exc.msg}); e.g. "
                              f"'{key}={_EXAMPLES.get(key, '1')}'") from None
        value = raw
    if isinstance(value, int) and not isinstance(value, bool) and _type_ok(0.5, hint):
        value = float(value)  # a float field given as 1 holds 1.0, as the dataclass default would
    try:
        value = _from_plain(key, value)
    except TypeError as exc:
        raise ConfigError(f"override {text!r}: {exc}") from None
    check_fields(dataclasses.replace(recipe, **{key: value}))
    return {key: value}

