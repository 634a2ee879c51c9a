"""Recipes as data: a :class:`Recipe` dataclass, a registry, and :func:`run_recipe` that trains one end to end.

A recipe names everything a seed system does (model, data, optimizer, schedule, augmentation, mixing, phases,
checkpoints, early stopping, TTA) as plain fields, so the CLI can override any field (``--set epochs=2``) and a
notebook can print the recipe it runs.
"""
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
MONITORS = typing.get_args(Monitor)


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
    optimizer: str = "sgd"  # a name in OPTIMIZERS: sgd | adam | adamw
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
    # speed
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
        nested = {"scheduler": ScheduleSpec, "lr_finder": LRFinderSpec}
        try:  # plain dicts (from JSON, a notebook) become the dataclasses the fields hold
            for key, cls in nested.items():
                if isinstance(overrides.get(key), dict):
                    overrides[key] = cls(**overrides[key])
            if isinstance(overrides.get("phases"), list):
                overrides["phases"] = [_as_phase(p) for p in overrides["phases"]]
        except TypeError as exc:
            raise ConfigError(f"recipe override: {exc}") from None
        return dataclasses.replace(copy.deepcopy(self), **overrides)

    def to_dict(self) -> Dict[str, Any]:
        """The recipe as plain data (JSON-serializable)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def validate(self) -> "Recipe":
        """Check every field before any work: types (from the annotations), ranges, and every name the recipe uses
        (model, optimizer, schedulers incl. those inside phases, augmentations incl. phase ones, TTA, amp, loader,
        monitor). Returns self.

        Raises:
            ConfigError: names the field, the bad value and what is expected.
            UnknownNameError: an unregistered model/optimizer/scheduler/augmentation name (lists the valid ones).
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
        if self.phases:
            validate_phases(self.phases)
        check_names(self)
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


def _as_phase(p: Union[Phase, Dict[str, Any]]) -> Phase:
    """A :class:`Phase` from a dict (JSON, ``--set phases=...``), its scheduler dict made a ScheduleSpec."""
    phase = Phase(**p) if isinstance(p, dict) else p
    if isinstance(phase.scheduler, dict):
        phase = dataclasses.replace(phase, scheduler=ScheduleSpec(**phase.scheduler))
    return phase


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (Optional/Union, Literal, List, Dict, classes)."""
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
    """Whether the annotation ``hint`` accepts some string (str, or a Literal of names)."""
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
    """Check each field of the dataclass ``obj`` (a Recipe, and the ScheduleSpec / LRFinderSpec / Phases it holds)
    against its type annotation (``typing.get_type_hints``).

    Raises:
        ConfigError: ``recipe field 'epochs' must be int, got 'abc' (str)``; for names from a fixed list,
            ``monitor must be one of 'test_acc', ..., got 'bogus'``.
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
    """Check every registered name ``recipe`` uses: model, optimizer, schedulers (also inside phases) and
    augmentation presets (also inside phases), each against its one list.

    Raises:
        UnknownNameError: names the field (``phases[1].scheduler``), the bad name and the valid ones.
    """
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
    """The recipe's optimizer (a name in :data:`OPTIMIZERS`) over ``model``'s trainable parameters.

    Raises:
        UnknownNameError: an optimizer name that is not registered.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused kernels update all parameters in one launch on CUDA; the CPU keeps the default implementation.
    fused = {"fused": True} if params and params[0].is_cuda else {}
    return OPTIMIZERS.get(recipe.optimizer)(params, recipe, fused)


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
    hint = typing.get_type_hints(Recipe)[key]
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        if not _takes_text(hint):  # a field that takes text keeps the raw text (checked below)
            raise ConfigError(f"override {text!r}: {raw!r} is not valid JSON ({exc.msg}); e.g. "
                              f"'{key}={_example(key)}'") from None
        value = raw
    if isinstance(value, int) and not isinstance(value, bool) and _type_ok(0.5, hint):
        value = float(value)  # a float field given as 1 holds 1.0, as the dataclass default would
    nested = {"scheduler": ScheduleSpec, "lr_finder": LRFinderSpec}
    try:
        if key in nested and isinstance(value, dict):
            value = nested[key](**value)
        if key == "phases" and isinstance(value, list):
            value = [_as_phase(p) for p in value]
    except TypeError as exc:
        raise ConfigError(f"override {text!r}: {exc}") from None
    check_fields(dataclasses.replace(recipe, **{key: value}))
    return {key: value}


def _example(key: str) -> str:
    return {"scheduler": '{"name": "cosine", "params": {}}', "model_kwargs": '{"dropout": 0.1}',
            "phases": '[{"start": 1, "end": 10}]', "lr_finder": '{"end_lr": 1.0}'}.get(key, "1")
