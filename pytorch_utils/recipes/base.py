"""Recipes as data: the :class:`Recipe` dataclass (every setting of a seed system as a plain field the CLI can
override, ranges declared beside the fields), its registry, and the smoke profile for tiny runs."""
import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Union

import torch
import torch.nn as nn

from pytorch_utils.data.folders import MAX_SIDE, MAX_TOTAL_PIXELS
from pytorch_utils.errors import ConfigError, UnknownNameError, bounded, check_fields
from pytorch_utils.registry import Registry
from pytorch_utils.train.callbacks import Phase, validate_phases
from pytorch_utils.train.lr_finder import LRFinderSpec
from pytorch_utils.train.schedules import SCHEDULES, ScheduleSpec, check_spec, with_found_lrs
from pytorch_utils.train.tta import TTAMode
from pytorch_utils.utils import AmpMode

# The sets of names a recipe field takes, each listed once (the CLI's choices and Recipe.validate read them).
LoaderKind = Literal["auto", "gpu", "dataloader"]  # auto: GPU-resident on CUDA, DataLoader on the CPU
LOADER_KINDS = typing.get_args(LoaderKind)
Monitor = Literal["test_acc", "test_loss", "train_acc", "train_loss"]


@dataclass
class Recipe:
    """A complete training recipe. Every field can be overridden with ``recipe.replace(**kw)`` or the CLI."""

    name: str = "default"
    description: str = ""
    model: str = "s10_resnet"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    data: str = "cifar10"  # default data set; the CLI's --data overrides it
    num_classes: Optional[int] = bounded(None, ge=2)  # None: taken from the data
    train_limit: Optional[int] = bounded(None, ge=1)  # stratified subsets for quick runs
    test_limit: Optional[int] = bounded(None, ge=1)
    max_side: int = bounded(MAX_SIDE, ge=1)  # image folders/zips: limits on the images, see load_image_folder
    max_total_pixels: int = bounded(MAX_TOTAL_PIXELS, ge=1)
    epochs: int = bounded(20, ge=1)
    batch_size: int = bounded(128, ge=1)
    optimizer: str = "sgd"  # a name in OPTIMIZERS: sgd | adam | adamw
    lr: float = bounded(0.05, gt=0)
    momentum: float = bounded(0.9, ge=0, le=1)
    nesterov: bool = False
    weight_decay: float = bounded(5e-4, ge=0)
    scheduler: Optional[ScheduleSpec] = None
    lr_finder: Optional[LRFinderSpec] = None  # fills the schedule's LRs from the range test (see with_found_lrs)
    grad_clip: Optional[float] = bounded(None, gt=0)  # max gradient norm
    accumulate_steps: int = bounded(1, ge=1)  # one optimizer step per this many batches
    augmentation: str = "standard"  # train preset (see pytorch_utils.data.transforms.list_presets)
    augmentation_kwargs: Dict[str, Any] = field(default_factory=dict)
    label_smoothing: float = bounded(0.0, ge=0, lt=1)
    mixup_alpha: float = bounded(0.0, ge=0)
    cutmix_alpha: float = bounded(0.0, ge=0)
    mix_switch_prob: float = bounded(0.5, ge=0, le=1)
    mix_prob: float = bounded(1.0, ge=0, le=1)
    phases: List[Phase] = field(default_factory=list)  # epoch ranges changing scheduler/dropout/aug/mixing/size
    tta: Optional[TTAMode] = None  # None or a name in train.tta.TTA_MODES
    ema_decay: Optional[float] = bounded(None, gt=0, lt=1)
    early_stopping_patience: Optional[int] = bounded(None, ge=1)
    early_stopping_start: Optional[int] = bounded(None, ge=1)  # epochs before this one never count
    monitor: Monitor = "test_acc"
    keep_last: int = bounded(5, ge=1)
    checkpoint_every: int = bounded(1, ge=1)  # epochs between checkpoints (the last and a new best always saved)
    hub_repo: Optional[str] = None  # Hugging Face repo id; needs a token and a network
    hub_every: int = bounded(10, ge=0)
    tensorboard: bool = False  # also log per-epoch scalars for TensorBoard (needs the optional tensorboard package)
    loader: LoaderKind = "auto"  # auto (GPU-resident on CUDA, DataLoader on CPU) | gpu | dataloader
    num_workers: Optional[int] = bounded(None, ge=0)
    amp: Optional[AmpMode] = "auto"  # None or a name in utils.AMP_MODES: none | auto | bf16 | fp16
    channels_last: bool = True  # only applied on CUDA
    compile: bool = False
    sync_bn: bool = True  # under torchrun on GPUs: BatchNorm statistics over the global batch, as on one GPU
    seed: int = bounded(0, ge=0, le=2**32 - 1)  # numpy's seed range

    def __post_init__(self):
        check_fields(self, "recipe field")

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
        """Check what the fields cannot check alone, before any work: names (model, optimizer, augmentation and its
        kwargs, schedules, also in phases), schedule parameters (as the LR finder will fill them), phases. Returns
        self. Raises ConfigError or UnknownNameError (naming the field and the valid choices)."""
        from pytorch_utils.data.transforms import check_augmentation
        from pytorch_utils.models import create_model

        if "num_classes" in self.model_kwargs:
            raise ConfigError("model_kwargs must not hold num_classes: set the recipe field num_classes (or leave it "
                              "None to take the data set's class count)")
        check_names(self)  # first: a misspelled name is named with its place (phases[1].scheduler)
        check_augmentation(self.augmentation, self.augmentation_kwargs)
        with torch.device("meta"):  # model_kwargs bound and range-checked by the builder, no memory allocated
            create_model(self.model, num_classes=self.num_classes or 10, **self.model_kwargs)
        # The finder fills its parameters later: check with placeholders where the user gave none.
        given = (lambda spec, filled: spec and ScheduleSpec(spec.name, {**filled.params, **spec.params}))
        recipe = self.with_lrs(1.0, 0.1) if self.lr_finder else self
        if self.scheduler is not None:
            check_spec(given(self.scheduler, recipe.scheduler), span=self.epochs)
        if self.phases:
            validate_phases([dataclasses.replace(p, scheduler=given(p.scheduler, q.scheduler))
                             for p, q in zip(self.phases, recipe.phases)])
        return self

    def with_lrs(self, lr_max: float, lr_min: float) -> "Recipe":
        """A copy without the LR finder, its schedules' LRs filled as the finder would (see :func:`with_found_lrs`);
        a recipe without any schedule gets a constant one at ``lr_max``."""
        scheduler = self.scheduler
        if scheduler is None and not any(p.scheduler for p in self.phases):
            scheduler = ScheduleSpec()  # constant
        phases = [dataclasses.replace(p, scheduler=with_found_lrs(p.scheduler, lr_max, lr_min)) for p in self.phases]
        return self.replace(lr_finder=None, scheduler=with_found_lrs(scheduler, lr_max, lr_min), phases=phases)

    def with_peak_lr(self, lr: float) -> "Recipe":
        """A copy with ``lr`` as its peak LR set by hand (the CLI's ``--lr``): no LR finder, the schedules filled as
        the finder would with ``lr_max = lr`` and ``lr_min = lr /`` the finder's ``div`` (10 by default)."""
        div = self.lr_finder.div if self.lr_finder is not None else 10.0
        return self.with_lrs(float(lr), lr / div).replace(lr=float(lr))


_NESTED = {"scheduler": ScheduleSpec, "lr_finder": LRFinderSpec}


def _from_plain(key: str, value: Any) -> Any:
    """A field value from plain data (JSON, a notebook): dicts become the dataclasses the fields hold."""
    if key in _NESTED and isinstance(value, dict):
        return _spec(_NESTED[key], key, value)
    if key == "phases" and isinstance(value, list):
        return [_spec(Phase, f"phases[{i}]", p) if isinstance(p, dict) else p for i, p in enumerate(value)]
    return value


def _spec(cls: type, key: str, value: Dict[str, Any]) -> Any:
    """``cls(**value)``; TypeError naming the keys ``cls`` takes when ``value`` has others."""
    keys = [f.name for f in dataclasses.fields(cls)]
    if set(value) - set(keys):
        raise TypeError(f"{key} takes the keys {', '.join(keys)}; got {', '.join(sorted(set(value) - set(keys)))}")
    return cls(**value)


def _takes_text(hint: Any) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    return any(a is str or typing.get_origin(a) is Literal for a in args)


def check_names(recipe: "Recipe") -> None:
    """Check the model, optimizer, scheduler and augmentation names (also inside phases); raises UnknownNameError
    naming the field (``phases[1].scheduler``), the bad name and the valid ones."""
    from pytorch_utils.data.transforms import list_presets
    from pytorch_utils.models import list_models

    wanted = [("model", recipe.model, list_models()), ("optimizer", recipe.optimizer, OPTIMIZERS.names()),
              ("augmentation", recipe.augmentation, list_presets())]
    if recipe.scheduler is not None:
        wanted.append(("scheduler", recipe.scheduler.name, list(SCHEDULES)))
    for i, phase in enumerate(recipe.phases):
        if phase.scheduler is not None:
            wanted.append((f"phases[{i}].scheduler", phase.scheduler.name, list(SCHEDULES)))
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


def smoke_recipe(recipe: Recipe, data: str = "synthetic", *, epochs: int = 1, train_limit: int = 256,
                 test_limit: int = 128, batch_size: int = 32, lr_sweep: int = 20) -> Recipe:
    """The smoke profile: ``recipe`` as a tiny run (``epochs`` epochs on ``train_limit`` / ``test_limit`` images of
    ``data`` at ``batch_size``, an LR sweep of ``lr_sweep`` steps, no workers) that still runs every part of it: what
    the recipe counts in epochs (schedule parameters, phases, the early-stopping start) is scaled by ``epochs /
    recipe.epochs``, so a One Cycle still rises and falls and each phase that fits gets its turn. Used by the notebooks'
    smoke switch and the tests; a real run executes none of it."""
    f = epochs / recipe.epochs

    def scale(spec: Optional[ScheduleSpec]) -> Optional[ScheduleSpec]:
        if spec is None:
            return None
        scaled = {k: (v * f if k == "peak_epoch" else max(1 if v else 0, round(v * f)))
                  for k, v in spec.params.items() if k in SCHEDULES[spec.name].epoch_params}
        return ScheduleSpec(spec.name, {**spec.params, **scaled})

    phases, end = [], 0
    for p in recipe.phases:
        if end < epochs:
            start, end = end + 1, min(epochs, max(end + 1, round(p.end * f)))
            phases.append(dataclasses.replace(p, start=start, end=end, scheduler=scale(p.scheduler)))
    if phases:
        phases[-1] = dataclasses.replace(phases[-1], end=epochs)
    start = recipe.early_stopping_start
    return recipe.replace(
        data=data, epochs=epochs, train_limit=train_limit, test_limit=test_limit, batch_size=batch_size,
        num_workers=0, scheduler=scale(recipe.scheduler), phases=phases,
        lr_finder=recipe.lr_finder and dataclasses.replace(recipe.lr_finder, num_iter=lr_sweep),
        early_stopping_start=start and max(1, round(start * f)))


def list_recipes() -> List[str]:
    """Names of the registered recipes, sorted."""
    return _RECIPES.names()


_EXAMPLES = {"scheduler": '{"name": "%s", "params": {}}' % next(iter(SCHEDULES)), "model_kwargs": '{"dropout": 0.1}',
             "phases": '[{"start": 1, "end": 10}]', "lr_finder": '{"end_lr": 1.0}'}


def parse_override(recipe: Recipe, text: str) -> Dict[str, Any]:
    """Parse one ``key=value`` CLI override: the value as JSON when it parses, else as text for a field that takes
    text (``epochs=2``, ``tta=flip``, ``scheduler=null``). Raises ConfigError naming what does not fit."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    hint = typing.get_type_hints(Recipe).get(key, str)  # an unknown field is named by recipe.replace, below
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        if not _takes_text(hint):  # a field that takes text keeps the raw text (checked below)
            raise ConfigError(f"override {text!r}: {raw!r} is not valid JSON ({exc.msg}); e.g. "
                              f"'{key}={_EXAMPLES.get(key, '1')}'") from None
        value = raw
    if isinstance(value, int) and not isinstance(value, bool) and float in (hint, *typing.get_args(hint)):
        value = float(value)  # a float field given as 1 holds 1.0, as the dataclass default would
    try:
        value = _from_plain(key, value)
    except TypeError as exc:
        raise ConfigError(f"override {text!r}: {exc}") from None
    recipe.replace(**{key: value})  # checks the name and the value (Recipe.__post_init__)
    return {key: value}

