"""Callbacks for ``fit``: early stopping and phase schedules (dropout / augmentation / MixUp / LR by epoch). Both
derive their state from the restored history and epoch, so a resumed run behaves like an uninterrupted one."""
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn

from pytorch_utils.errors import ConfigError
from pytorch_utils.train.schedules import ScheduleSpec, check_spec, initial_lr, phase_schedule
from pytorch_utils.train.state import Callback, TrainState
from pytorch_utils.utils import unwrap_model


class EarlyStopping(Callback):
    """Stop when ``monitor`` (an epoch-record key) has not improved by more than ``min_delta`` for ``patience`` epochs
    (``mode`` "max" or "min"). The stopping epoch gets ``record["early_stop"] = True``; ``state.stop_reason`` says why.

    Epochs before ``start_epoch`` (1-based; None counts all) set no best value and use no patience, so a schedule that
    may get worse for a while cannot stop the run early. A resumed run replays its history through the same rule in
    ``on_fit_start``, and stops at once if that history already used up the patience.
    """

    def __init__(self, monitor: str = "test_acc", mode: str = "max", patience: int = 15, min_delta: float = 0.0,
                 start_epoch: Optional[int] = None):
        if patience < 1:
            raise ConfigError(f"patience must be >= 1, got {patience}")
        if mode not in ("max", "min"):
            raise ConfigError(f"mode must be 'max' or 'min', got {mode!r}")
        if start_epoch is not None and (isinstance(start_epoch, bool) or not hasattr(start_epoch, "__index__")
                                        or start_epoch < 1):
            raise ConfigError(f"start_epoch must be None or an integer >= 1, got {start_epoch!r}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.start_epoch = None if start_epoch is None else int(start_epoch)
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
    """Settings from epoch ``start`` to ``end`` (1-based, inclusive); None keeps what was set. ``scheduler``: a
    :class:`ScheduleSpec` (not "plateau") run until the next phase that declares one; ``dropout``: p of every dropout;
    ``augmentation``/``input_size``: train preset and size; ``mixup_alpha``/``cutmix_alpha``: the mixer's alphas."""

    start: int
    end: int
    name: str = ""
    scheduler: Optional[ScheduleSpec] = None
    dropout: Optional[float] = None
    augmentation: Optional[str] = None
    input_size: Optional[int] = None
    mixup_alpha: Optional[float] = None
    cutmix_alpha: Optional[float] = None


SETTINGS = ("dropout", "augmentation", "input_size", "mixup_alpha", "cutmix_alpha")


def validate_phases(phases: Sequence[Phase], epochs: Optional[int] = None) -> List[Phase]:
    """Check phases (Phase objects or dicts) are non-empty and contiguous from epoch 1; return them as Phase objects.
    With ``epochs``, phases are cut to it (a 2-epoch smoke run keeps those covering epochs 1-2), the last stretched."""
    phases = [p if isinstance(p, Phase) else Phase(**p) for p in phases]
    if not phases:
        raise ConfigError("a phase schedule needs at least one phase")
    expected = 1
    for p in phases:
        if p.start != expected or p.end < p.start:
            raise ConfigError(f"phases must be contiguous from epoch 1: phase {p.name or p.start} covers "
                              f"{p.start}-{p.end}, expected it to start at {expected}")
        if isinstance(p.scheduler, dict):
            p.scheduler = ScheduleSpec(**p.scheduler)
        if p.scheduler is not None:
            check_spec(p.scheduler, where=f"phase {p.name or p.start}")
            if p.scheduler.name == "plateau":
                raise ConfigError(f"phase {p.name or p.start}: a plateau scheduler depends on the metrics, not the "
                                  "epoch, so it cannot be one piece of a phase schedule; use it without phases")
        expected = p.end + 1
    if epochs is not None:
        phases = [p for p in phases if p.start <= epochs]
        phases[-1] = replace(phases[-1], end=epochs)
    return phases


def set_dropout(model: nn.Module, p: float) -> int:
    """Set ``p`` on every dropout module of ``model``; returns how many were changed."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
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
        if aug != (self.applied.get("augmentation"), self.applied.get("input_size")) and aug[0] is not None:
            # The one augmentation switch of both package loaders (make_loader, GPULoader); they keep their seed.
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
        schedule = phase_schedule(self.phases, state.steps_per_epoch, state.epochs, initial_lr(state.optimizer))
        if schedule is not None:
            schedule.check_optimizer(state.optimizer)
            state.scheduler = schedule
        self._apply(state, state.epoch + 1)

    def on_epoch_start(self, state: TrainState) -> None:
        self._apply(state, state.epoch + 1)

    def on_epoch_end(self, state: TrainState, record: Dict[str, Any]) -> None:
        phase = self.phases[self.index_for(record["epoch"])]
        record["phase"] = phase.name or f"{phase.start}-{phase.end}"
