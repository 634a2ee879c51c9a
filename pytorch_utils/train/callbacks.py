"""Callbacks for ``fit``: early stopping and phase schedules (dropout / augmentation / MixUp / LR by epoch). Both
derive their state from the restored history and epoch, so a resumed run behaves like an uninterrupted one."""
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence

import torch.nn as nn

from pytorch_utils.errors import ConfigError, bounded, check_fields
from pytorch_utils.train.schedules import SCHEDULES, ScheduleSpec, check_spec, initial_lr, phase_schedule
from pytorch_utils.train.state import Callback, TrainState
from pytorch_utils.utils import unwrap_model


@dataclass
class EarlyStopping(Callback):
    """Stop when ``monitor`` (an epoch-record key) has not improved by more than ``min_delta`` for ``patience`` epochs
    (``mode`` "max" or "min"). The stopping epoch gets ``record["early_stop"] = True``; ``state.stop_reason`` says why.

    Epochs before ``start_epoch`` (1-based; None counts all) set no best value and use no patience, so a schedule that
    may get worse for a while cannot stop the run early. A resumed run replays its history through the same rule in
    ``on_fit_start``, and stops at once if that history already used up the patience. Checked when built.
    """

    monitor: str = "test_acc"
    mode: Literal["max", "min"] = "max"
    patience: int = bounded(15, ge=1)
    min_delta: float = bounded(0.0, ge=0)
    start_epoch: Optional[int] = bounded(None, ge=1)

    def __post_init__(self):
        check_fields(self, "EarlyStopping field")
        self.best, self.best_epoch, self.wait = None, None, 0

    def _observe(self, epoch: Optional[int], value: Optional[float]) -> None:
        if value is None or (self.start_epoch is not None and epoch is not None and epoch < self.start_epoch):
            return
        if self.best is None or (value > self.best + self.min_delta if self.mode == "max"
                                 else value < self.best - self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += 1

    def _stop(self, state: TrainState) -> None:
        state.stop = True
        state.stop_reason = (f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                             f"(best {self.best:.4f} at epoch {self.best_epoch})")

    def on_fit_start(self, state: TrainState) -> None:
        self.best, self.best_epoch, self.wait = None, None, 0
        for rec in state.history:  # replay a resumed run's history
            self._observe(rec.get("epoch"), rec.get(self.monitor))
        if self.wait >= self.patience:  # the run had already stopped early: do not train another epoch
            self._stop(state)

    def on_epoch_end(self, state: TrainState, record: Dict[str, Any]) -> None:
        if self.monitor not in record:
            raise ConfigError(f"early stopping monitors {self.monitor!r} but the epoch record has only "
                              f"{sorted(record)}; pass a test loader or monitor 'train_loss'")
        self._observe(record["epoch"], record[self.monitor])
        if self.wait >= self.patience:
            self._stop(state)
            record["early_stop"] = True


@dataclass
class Phase:
    """Settings from epoch ``start`` to ``end`` (1-based, inclusive; the last phase runs to the end of the run); None
    keeps what was set. ``scheduler``: a :class:`ScheduleSpec` (or dict; not a metric-driven one) run until the next
    phase that declares one, shaped for that span; ``dropout``: p of every dropout; ``augmentation``: the train
    preset; ``input_size``: the training side in pixels (progressive resizing); ``mixup_alpha``/``cutmix_alpha``: the
    mixer's alphas. Checked when built."""

    start: int = bounded(ge=1)
    end: int = bounded(ge=1)
    name: str = ""
    scheduler: Optional[ScheduleSpec] = None
    dropout: Optional[float] = bounded(None, ge=0, lt=1)
    augmentation: Optional[str] = None
    input_size: Optional[int] = bounded(None, ge=8, le=1024)
    mixup_alpha: Optional[float] = bounded(None, ge=0)
    cutmix_alpha: Optional[float] = bounded(None, ge=0)

    def __post_init__(self):
        if isinstance(self.scheduler, dict):
            self.scheduler = ScheduleSpec(**self.scheduler)
        check_fields(self, f"phase {self.name or self.start} field")


SETTINGS = ("dropout", "augmentation", "input_size", "mixup_alpha", "cutmix_alpha")


def validate_phases(phases: Sequence[Phase]) -> List[Phase]:
    """Phases (Phase objects or dicts) as Phase objects, checked: at least one, contiguous from epoch 1, each schedule
    valid for its span (see :func:`check_spec`) and not metric-driven. Raises ConfigError naming the phase."""
    phases = [p if isinstance(p, Phase) else Phase(**p) for p in phases]
    if not phases:
        raise ConfigError("a phase schedule needs at least one phase")
    starts = [p.start for p in phases if p.scheduler is not None] + [phases[-1].end + 1]
    for i, p in enumerate(phases):
        where = f"phase {p.name or p.start}"
        if p.start != (phases[i - 1].end + 1 if i else 1) or p.end < p.start:
            raise ConfigError(f"phases must be contiguous from epoch 1: {where} covers {p.start}-{p.end}, expected "
                              f"it to start at {phases[i - 1].end + 1 if i else 1}")
        if p.scheduler is not None:
            check_spec(p.scheduler, where=f"{where}: scheduler", span=next(s for s in starts if s > p.start) - p.start)
            if SCHEDULES[p.scheduler.name].curves is None:  # ReduceLROnPlateau
                raise ConfigError(f"{where}: a {p.scheduler.name} scheduler follows the metrics, not the epoch, so it "
                                  "cannot be one piece of a phase schedule; use it without phases")
    return phases


def set_dropout(model: nn.Module, p: float) -> int:
    """Set ``p`` (in [0, 1)) on every dropout module of ``model``; returns how many were changed."""
    layers = [m for m in unwrap_model(model).modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in layers:
        m.p = p
    return len(layers)


class PhaseSchedule(Callback):
    """Applies the :class:`Phase` settings of the epoch about to run (derived from the epoch, so a resumed run gets
    what the uninterrupted one had); at fit start, sets the phases' one piecewise LR schedule as ``state.scheduler``."""

    def __init__(self, phases: Sequence[Phase]):
        self.phases = validate_phases(phases)
        self.applied: Dict[str, Any] = {}

    def index_for(self, epoch: int) -> int:
        """Index of the phase holding 1-based ``epoch`` (the last phase beyond the end)."""
        return next((i for i, p in enumerate(self.phases) if p.start <= epoch <= p.end), len(self.phases) - 1)

    def settings_for(self, index: int) -> Dict[str, Any]:
        """The settings in force in phase ``index``: each from the latest phase up to it that sets it."""
        out: Dict[str, Any] = {}
        for p in self.phases[: index + 1]:
            out.update({key: getattr(p, key) for key in SETTINGS if getattr(p, key) is not None})
        return out

    def _apply(self, state: TrainState, epoch: int) -> None:
        settings = self.settings_for(self.index_for(epoch))
        if settings == self.applied:
            return
        if "dropout" in settings:
            set_dropout(state.model, settings["dropout"])
        aug = (settings.get("augmentation"), settings.get("input_size"))
        if aug != (self.applied.get("augmentation"), self.applied.get("input_size")):
            # The one augmentation switch of both package loaders (make_loader, GPULoader; they keep their seed);
            # None keeps the loader's current preset or size, so a phase may change the input size alone.
            state.train_loader.set_augmentation(aug[0], size=aug[1])
        if state.mixer is not None:
            state.mixer.mixup_alpha = float(settings.get("mixup_alpha", state.mixer.mixup_alpha))
            state.mixer.cutmix_alpha = float(settings.get("cutmix_alpha", state.mixer.cutmix_alpha))
        elif settings.get("mixup_alpha") or settings.get("cutmix_alpha"):
            raise ConfigError("a phase sets a MixUp/CutMix alpha but fit() got no mixer; pass mixer=Mixer(...)")
        self.applied = settings

    def on_fit_start(self, state: TrainState) -> None:
        self.applied = {}
        switches_aug = any(p.augmentation or p.input_size for p in self.phases)
        if switches_aug and not hasattr(state.train_loader, "set_augmentation"):
            raise ConfigError("a phase changes the augmentation or input size, but the training loader has no "
                              "set_augmentation(); build it with make_loader(...) or GPULoader(...)")
        # The last phase runs to the end of the run (its schedule shaped for that span).
        last = dataclasses.replace(self.phases[-1], end=max(self.phases[-1].end, state.epochs))
        schedule = phase_schedule(self.phases[:-1] + [last], state.steps_per_epoch, initial_lr(state.optimizer))
        if schedule is not None:
            schedule.check_optimizer(state.optimizer)
            state.scheduler = schedule
        self._apply(state, state.epoch + 1)

    def on_epoch_start(self, state: TrainState) -> None:
        self._apply(state, state.epoch + 1)

    def on_epoch_end(self, state: TrainState, record: Dict[str, Any]) -> None:
        phase = self.phases[self.index_for(record["epoch"])]
        record["phase"] = phase.name or f"{phase.start}-{phase.end}"
