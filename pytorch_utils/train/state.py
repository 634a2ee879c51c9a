"""What a run holds between epochs (:class:`TrainState`), how it trains (:class:`TrainConfig`), and the hooks
(:class:`Callback`) ``fit`` calls. Its own module so checkpoints, callbacks and the loop share it without a cycle."""
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from pytorch_utils.errors import bounded, check_fields
from pytorch_utils.io import atomic_write_text
from pytorch_utils.utils import AmpMode


@dataclass
class TrainConfig:
    """How ``fit`` / ``train_one_epoch`` train (checked when built: it is the door of a user's own training code).

    amp: None (fp32), "none", "auto", "bf16" or "fp16" (adds a GradScaler). grad_clip: max gradient norm, None off.
    accumulate_steps: one optimizer step per N batches, each loss scaled by 1 / N. mixer: MixUp/CutMix
    ``(inputs, targets) -> (inputs, targets)``; ema: ``update(model)`` after each optimizer step, its ``module`` is
    evaluated; tta: a TTA mode for evaluation; device: None trains where the model is; sync_every: steps between host
    reads of the metrics (progress bar, NaN check).
    """

    amp: Optional[AmpMode] = None
    channels_last: bool = False
    grad_clip: Optional[float] = bounded(None, gt=0)
    accumulate_steps: int = bounded(1, ge=1)
    mixer: Optional[Callable] = None
    ema: Any = None
    tta: Any = None
    eval_criterion: Optional[Callable] = None
    device: Any = None
    cudnn_benchmark: bool = True
    progress: bool = True
    sync_every: int = bounded(50, ge=1)

    def __post_init__(self):
        check_fields(self, "TrainConfig field")


class History(list):
    """Per-epoch records (dicts) of a run; a list with a few conveniences."""

    def column(self, key: str) -> List[Any]:
        """Values of ``key`` over the epochs (None where an epoch lacks it)."""
        return [rec.get(key) for rec in self]

    def best(self, key: str = "test_acc", mode: str = "max") -> Optional[Dict[str, Any]]:
        """The record with the best ``key`` (``mode`` "max" or "min"), or None when no record has it."""
        recs = [r for r in self if r.get(key) is not None]
        return (max if mode == "max" else min)(recs, key=lambda r: r[key], default=None)

    def save_json(self, path) -> None:
        """Write the history as JSON (atomically)."""
        atomic_write_text(path, json.dumps(list(self), indent=2))


@dataclass
class TrainState:
    """Everything a run holds between epochs; callbacks read and change it. ``epoch``: completed epochs; ``step``:
    optimizer steps applied (what a StepSchedule reads); ``stop``: end the run after this epoch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable
    train_loader: Any
    test_loader: Any
    device: torch.device
    epochs: int
    config: TrainConfig = field(default_factory=TrainConfig)
    scheduler: Any = None
    scaler: Optional[torch.amp.GradScaler] = None
    steps_per_epoch: int = 1
    step: int = 0
    epoch: int = 0
    history: History = field(default_factory=History)
    stop: bool = False
    stop_reason: Optional[str] = None

    @property
    def mixer(self):
        return self.config.mixer

    @property
    def ema(self):
        return self.config.ema


class Callback:
    """Hooks ``fit`` calls with the :class:`TrainState`; override what you need. A resumed run is restored before the
    first hook, so no callback depends on the order of the others."""

    def on_fit_start(self, state: TrainState) -> None:
        """Once before the first epoch (a resumed run's state is already restored)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Before each epoch; ``state.epoch`` is the number of completed epochs."""

    def on_epoch_end(self, state: TrainState, record: Dict[str, Any]) -> None:
        """After each epoch, once ``record`` (this epoch's metrics) is in ``state.history``; may add keys to it."""

    def on_epoch_complete(self, state: TrainState, record: Dict[str, Any]) -> None:
        """After every callback's ``on_epoch_end`` (the record is final): where checkpoints are written."""

    def on_fit_end(self, state: TrainState) -> None:
        """Once after the last epoch, also when the run stopped early."""

    def on_exception(self, state: TrainState, exc: BaseException) -> None:
        """When an epoch raises (NaN loss, KeyboardInterrupt...) before the exception propagates."""
