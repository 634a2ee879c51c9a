"""Learning-rate schedules, declared as data (:class:`ScheduleSpec`) and built against an optimizer.

Every scheduler built here carries an ``interval`` attribute ("batch", "epoch" or "plateau") that tells the engine
when to step it, so recipes never hard-code the stepping rule.
"""
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

import torch
from torch.optim.lr_scheduler import LRScheduler

from pytorch_utils.errors import ConfigError, UnknownNameError


class LinearOneCycleLR(LRScheduler):
    """One Cycle with linear ramps and **no annihilation**, stepped once per batch.

    The LR rises linearly from ``min_lr`` at step 0 to ``max_lr`` at ``peak_step``, then falls linearly back to
    ``min_lr`` at the last step (``total_steps - 1``) and never goes below ``min_lr``. (torch's OneCycleLR ends far
    below its start LR; the S10 recipe does not.)

    Args:
        optimizer: its param groups' LR is overwritten.
        max_lr, min_lr: the peak and the floor (0 < min_lr <= max_lr).
        total_steps: number of optimizer steps in the schedule (epochs * batches per epoch).
        peak_step: the step at which the LR is ``max_lr`` (e.g. 5 * batches per epoch for a peak at epoch 5).
    Raises:
        ConfigError: bad arguments, or stepping more than ``total_steps`` times.
    """

    interval = "batch"

    def __init__(self, optimizer, max_lr: float, min_lr: float, total_steps: int, peak_step: int, last_epoch=-1):
        if not (0 < min_lr <= max_lr):
            raise ConfigError(f"One Cycle needs 0 < min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
        if total_steps < 2 or not (0 <= peak_step < total_steps):
            raise ConfigError(f"One Cycle needs total_steps >= 2 and 0 <= peak_step < total_steps, "
                              f"got total_steps={total_steps}, peak_step={peak_step}")
        self.max_lr, self.min_lr = float(max_lr), float(min_lr)
        self.total_steps, self.peak_step = int(total_steps), int(peak_step)
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group["lr"] = self.min_lr
                group["initial_lr"] = self.min_lr
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> float:
        """The LR used for optimizer step ``step`` (0-based)."""
        if step <= self.peak_step:
            frac = step / self.peak_step if self.peak_step > 0 else 1.0
            return self.min_lr + (self.max_lr - self.min_lr) * frac
        down = self.total_steps - 1 - self.peak_step
        frac = min(1.0, (step - self.peak_step) / down) if down > 0 else 1.0
        return max(self.min_lr, self.max_lr - (self.max_lr - self.min_lr) * frac)

    def get_lr(self):
        step = self.last_epoch
        # One call past the end is allowed: the engine steps after the last batch, and that LR is never used.
        if step > self.total_steps:
            raise ConfigError(
                f"LinearOneCycleLR stepped {step} times but was built for {self.total_steps} steps; build it with "
                "total_steps = epochs * len(train_loader) for the epochs you actually train")
        lr = self.lr_at(min(step, self.total_steps - 1))
        return [lr for _ in self.optimizer.param_groups]


@dataclass
class ScheduleSpec:
    """A scheduler described as data: ``name`` plus keyword ``params`` (times in epochs unless noted).

    Names and params:
        "constant": none.
        "one_cycle_linear": max_lr, min_lr, peak_epoch (LinearOneCycleLR, per batch).
        "onecycle": max_lr, pct_start=0.3, div_factor, final_div_factor, anneal_strategy (torch OneCycleLR, per batch).
        "cosine": T_max (epochs, default: the span's length), eta_min (per epoch).
        "cosine_warm_restarts": T_0 (epochs), T_mult=1, eta_min (per epoch).
        "plateau": mode="min", factor=0.1, patience=10, min_lr (stepped with the test loss).
        "cyclic": base_lr, max_lr, step_size_up (epochs), mode="triangular" (torch CyclicLR, per batch).
        "step": step_size (epochs), gamma (per epoch).
    Common params: ``lr`` sets the optimizer's LR before the scheduler is built (a phase can restart from a new LR);
    ``warmup_epochs`` + ``warmup_start_lr`` prepend a linear warm-up (per-epoch schedules only).
    """

    name: str = "constant"
    params: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (for configs and checkpoints)."""
        return asdict(self)


SCHEDULE_NAMES = ("constant", "one_cycle_linear", "onecycle", "cosine", "cosine_warm_restarts", "plateau",
                  "cyclic", "step")


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["initial_lr"] = lr


def build_scheduler(spec: Optional[ScheduleSpec], optimizer, steps_per_epoch: int, epochs: int):
    """Build the scheduler ``spec`` describes for a span of ``epochs`` epochs of ``steps_per_epoch`` batches.

    Returns:
        the scheduler (with an ``interval`` attribute), or None for "constant"/None.
    Raises:
        UnknownNameError: unknown name; ConfigError: missing or inconsistent params.
    """
    if spec is None:
        return None
    if isinstance(spec, dict):
        spec = ScheduleSpec(**spec)
    if spec.name not in SCHEDULE_NAMES:
        raise UnknownNameError(f"unknown scheduler {spec.name!r}; valid schedulers: {', '.join(SCHEDULE_NAMES)}")
    if steps_per_epoch < 1 or epochs < 1:
        raise ConfigError(f"scheduler needs steps_per_epoch >= 1 and epochs >= 1, got {steps_per_epoch}, {epochs}")
    p = dict(spec.params)
    lr = p.pop("lr", None)
    if lr is not None:
        _set_lr(optimizer, float(lr))
    # A fresh scheduler must start from the LR it is given, not an earlier scheduler's initial_lr.
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    warmup = int(p.pop("warmup_epochs", 0) or 0)
    warmup_start = p.pop("warmup_start_lr", None)
    sched = torch.optim.lr_scheduler
    total = steps_per_epoch * epochs

    def need(key):
        if key not in p:
            raise ConfigError(f"scheduler {spec.name!r} needs the parameter {key!r}")
        return p.pop(key)

    name = spec.name
    if name == "constant":
        return None
    if name == "one_cycle_linear":
        max_lr, min_lr, peak = need("max_lr"), need("min_lr"), need("peak_epoch")
        peak_step = int(round(peak * steps_per_epoch))
        if peak_step >= total:
            # A shortened run (smoke test, --epochs 2) keeps the shape: peak at the same fraction of a default
            # 24-epoch S10 run (5/24), instead of a ramp that never comes down.
            fraction = peak / 24 if peak < 24 else 0.2
            warnings.warn(f"peak_epoch {peak} is beyond this {epochs}-epoch span; peaking at {fraction:.0%} of it",
                          RuntimeWarning, stacklevel=2)
            peak_step = min(total - 1, int(round(fraction * total)))
        s = LinearOneCycleLR(optimizer, max_lr, min_lr, total_steps=total, peak_step=peak_step)
    elif name == "onecycle":
        max_lr = need("max_lr")
        if total < 3:
            warnings.warn(f"a {total}-step run is too short for One Cycle; keeping the LR constant", RuntimeWarning,
                          stacklevel=2)
            return None
        # torch's OneCycleLR divides by zero when the warm-up phase is shorter than one step (tiny smoke runs).
        p["pct_start"] = max(p.get("pct_start", 0.3), 2.0 / total)
        s = sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, **p)
        s.interval = "batch"
    elif name == "cosine":
        s = sched.CosineAnnealingLR(optimizer, T_max=p.pop("T_max", epochs - warmup), **p)
        s.interval = "epoch"
    elif name == "cosine_warm_restarts":
        s = sched.CosineAnnealingWarmRestarts(optimizer, T_0=need("T_0"), **p)
        s.interval = "epoch"
    elif name == "plateau":
        s = sched.ReduceLROnPlateau(optimizer, **p)
        s.interval = "plateau"
    elif name == "cyclic":
        up = p.pop("step_size_up", max(1, epochs // 2))
        s = sched.CyclicLR(optimizer, base_lr=need("base_lr"), max_lr=need("max_lr"),
                           step_size_up=max(1, int(up * steps_per_epoch)), cycle_momentum=False, **p)
        s.interval = "batch"
    else:  # step
        s = sched.StepLR(optimizer, step_size=need("step_size"), **p)
        s.interval = "epoch"
    if warmup:
        if s.interval != "epoch":
            raise ConfigError(f"warmup_epochs only combines with per-epoch schedules, not {name!r}")
        base = optimizer.param_groups[0]["lr"]
        start = float(warmup_start) if warmup_start is not None else base / 10
        warm = sched.LinearLR(optimizer, start_factor=start / base, end_factor=1.0, total_iters=warmup)
        s = sched.SequentialLR(optimizer, [warm, s], milestones=[warmup])
        s.interval = "epoch"
    return s
