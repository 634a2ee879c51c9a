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
    num_iter: int = 100  # at least 17 (find_lr skips 10 + 5 points and needs 2 more)
    suggestion: str = "steepest"  # or "valley"
    div: float = 10.0  # LR_min = LR_max / div
    # The sweep takes at most this many epochs' worth of the run's batches (but at least min_iter): a short smoke
    # run on a small subset is not dominated by a 100-batch sweep, while a full run gets the full num_iter.
    max_epochs: float = 2.0
    min_iter: int = 20

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
    monitor: str = "test_acc"
    keep_last: int = 5
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch and a new best are always saved)
    hub_repo: Optional[str] = None  # Hugging Face repo id; needs a token and a network
    hub_every: int = 10
    # speed
    loader: str = "auto"  # auto (GPU-resident on CUDA, DataLoader on CPU) | gpu | dataloader
    num_workers: Optional[int] = None
    amp: Optional[str] = "auto"  # None | auto | bf16 | fp16
    channels_last: bool = True  # only applied on CUDA
    compile: bool = False
    seed: int = 0

    def replace(self, **overrides) -> "Recipe":
        """A copy with fields replaced; unknown field names raise ConfigError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown recipe field(s) {unknown}; valid fields: {', '.join(sorted(names))}")
        return dataclasses.replace(copy.deepcopy(self), **overrides)

    def to_dict(self) -> Dict[str, Any]:
        """The recipe as plain data (JSON-serializable)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def validate(self) -> "Recipe":
        """Check field values that would otherwise fail late; returns self."""
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.loader not in ("auto", "gpu", "dataloader"):
            raise ConfigError(f"loader must be 'auto', 'gpu' or 'dataloader', got {self.loader!r}")
        if self.phases:
            validate_phases(self.phases)
        return self


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
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    names = {f.name: f for f in dataclasses.fields(recipe)}
    if key not in names:
        raise ConfigError(f"unknown recipe field {key!r}; valid fields: {', '.join(sorted(names))}")
    current = getattr(recipe, key)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if key == "scheduler" and isinstance(value, dict):
        value = ScheduleSpec(**value)
    if key == "lr_finder" and isinstance(value, dict):
        value = LRFinderSpec(**value)
    if key == "phases" and isinstance(value, list):
        value = [Phase(**p) if isinstance(p, dict) else p for p in value]
    return {key: value}
