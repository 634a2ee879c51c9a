"""Learning-rate schedules as pure functions of the optimizer step, declared as data (:class:`ScheduleSpec`).

As nanoGPT's ``get_lr(it)``, so a checkpoint needs only the step count; ReduceLROnPlateau (metric-driven) stays a
torch scheduler. Where torch has the schedule, the formula is torch's (tests/train/test_schedules.py compares).
"""
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from pytorch_utils.errors import ConfigError, UnknownNameError

SCHEDULE_NAMES = ("constant", "one_cycle_linear", "onecycle", "cosine", "cosine_warm_restarts", "plateau",
                  "cyclic", "step")


@dataclass
class ScheduleSpec:
    """A schedule as data: ``name`` plus keyword ``params`` (times in epochs). Names and params:

    "constant"; "one_cycle_linear": max_lr, min_lr, peak_epoch (linear up and down, never below min_lr);
    "onecycle": max_lr, pct_start=0.3, div_factor=25, final_div_factor=1e4, anneal_strategy="cos", cycle_momentum=True,
    base_momentum=0.85, max_momentum=0.95 (torch OneCycleLR: the momentum, or Adam's beta1, falls as the LR rises);
    "cosine": T_max (default: the span minus the warm-up), eta_min=0; "cosine_warm_restarts": T_0, T_mult=1, eta_min=0;
    "plateau": torch ReduceLROnPlateau's params, stepped with the test loss; "step": step_size, gamma=0.1;
    "cyclic": base_lr, max_lr, step_size_up (default half the span), step_size_down, mode, gamma, cycle_momentum=True,
    base_momentum=0.8, max_momentum=0.9 (torch CyclicLR; steps in epochs here).
    Any: ``lr`` (start LR, default the optimizer's initial LR); per-epoch schedules also ``warmup_epochs`` and
    ``warmup_start_lr`` (default lr / 10), a linear warm-up. One-cycle and cyclic LRs change per step, others per epoch.
    """

    name: str = "constant"
    params: Dict[str, Any] = field(default_factory=dict)


class StepSchedule:
    """``lr = schedule(step)`` of the optimizer steps applied; ``schedule.momentum(step)`` is the momentum (SGD) or
    Adam's beta1 a momentum-cycling schedule sets, else None: the optimizer keeps its current value (after a cycling
    phase, the value that phase ended on, as when torch switches schedulers). ``pieces``: ``(first_step, lr_fn)`` or
    ``(first_step, lr_fn, momentum_fn or None)`` in order; a step uses the last piece starting at or before it,
    called with the step counted from that piece's start."""

    interval = "step"

    def __init__(self, pieces: Sequence[Tuple[Any, ...]]):
        assert pieces and pieces[0][0] == 0, "the first piece starts at step 0"
        self.pieces = [(p[0], p[1], p[2] if len(p) > 2 else None) for p in pieces]

    def _at(self, step: int, which: int) -> Optional[float]:
        start, *fns = next(p for p in reversed(self.pieces) if p[0] <= step)
        return None if fns[which] is None else float(fns[which](step - start))

    def __call__(self, step: int) -> float:
        return self._at(step, 0)

    def momentum(self, step: int) -> Optional[float]:
        return self._at(step, 1)

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """ConfigError when a piece cycles the momentum and ``optimizer`` has neither momentum nor betas (torch
        refuses that too)."""
        if any(p[2] is not None for p in self.pieces) and not {"momentum", "betas"} & set(optimizer.defaults):
            raise ConfigError(f"a scheduler cycles the momentum, which {type(optimizer).__name__} does not have: "
                              "add 'cycle_momentum': False to its params")


def linear_one_cycle(max_lr: float, min_lr: float, total_steps: int, peak_step: int) -> Callable[[int], float]:
    """One Cycle with linear ramps and no annihilation (the S10 recipe): ``min_lr`` at step 0, ``max_lr`` at
    ``peak_step``, back to ``min_lr`` at ``total_steps - 1`` and never below it (unlike torch's OneCycleLR)."""
    down = max(1, total_steps - 1 - peak_step)

    def lr(step: int) -> float:
        if step <= peak_step:
            return min_lr + (max_lr - min_lr) * (step / peak_step if peak_step > 0 else 1.0)
        return max(min_lr, max_lr - (max_lr - min_lr) * min(1.0, (step - peak_step) / down))
    return lr


def torch_one_cycle(start: float, peak: float, end: float, total_steps: int, pct_start: float = 0.3,
                    anneal_strategy: str = "cos") -> Callable[[int], float]:
    """A value of ``torch.optim.lr_scheduler.OneCycleLR`` at each step: ``start`` -> ``peak`` over the first
    ``pct_start`` of ``total_steps``, then -> ``end`` (the LR: max_lr / div_factor -> max_lr -> max_lr / div_factor /
    final_div_factor; the momentum: max_momentum -> base_momentum -> max_momentum)."""
    peak_end = float(pct_start * total_steps) - 1
    phases = ((0.0, peak_end, start, peak), (peak_end, total_steps - 1.0, peak, end))

    def value(step: int) -> float:
        first, last, a, b = phases[0] if step <= peak_end else phases[1]
        # max(): a run so short that a phase spans less than one step (a smoke run) gets that phase's end value.
        pct = min(1.0, (step - first) / max(last - first, 1e-12))
        if anneal_strategy == "cos":
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (b - a) * pct + a
    return value


def cyclic(base: float, peak: float, up: int, down: int, mode: str = "triangular",
           gamma: float = 1.0) -> Callable[[int], float]:
    """A value of ``torch.optim.lr_scheduler.CyclicLR`` at each step: ``base`` -> ``peak`` over ``up`` steps, back
    over ``down`` (the LR: base_lr -> max_lr; the momentum: max_momentum -> base_momentum)."""
    total, ratio = float(up + down), up / float(up + down)

    def value(step: int) -> float:
        cycle = math.floor(1 + step / total)
        x = 1.0 + step / total - cycle
        scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        factor = {"triangular": 1.0, "triangular2": 1 / (2.0 ** (cycle - 1)), "exp_range": gamma ** step}[mode]
        return base + (peak - base) * scale * factor
    return value


def cosine(base: float, t_max: int, eta_min: float = 0.0) -> Callable[[int], float]:
    """CosineAnnealingLR: ``eta_min + (base - eta_min) (1 + cos(pi t / T_max)) / 2`` for epoch ``t``."""
    return lambda t: eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


def cosine_warm_restarts(base: float, t_0: int, t_mult: int = 1, eta_min: float = 0.0) -> Callable[[int], float]:
    """CosineAnnealingWarmRestarts at epoch ``t``: cosine over cycles of ``T_0``, ``T_0 * T_mult``, ... epochs."""
    def lr(t: int) -> float:
        if t_mult == 1:
            t_cur, t_i = t % t_0, t_0
        else:
            n = int(math.log(t / t_0 * (t_mult - 1) + 1, t_mult))
            t_cur, t_i = t - t_0 * (t_mult ** n - 1) / (t_mult - 1), t_0 * t_mult ** n
        return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
    return lr


def _epoch_fn(name: str, p: Dict[str, Any], base: float, span: int) -> Callable[[int], float]:
    if name == "cosine":
        return cosine(base, p.pop("T_max", span), p.pop("eta_min", 0.0))
    if name == "cosine_warm_restarts":
        return cosine_warm_restarts(base, p.pop("T_0"), p.pop("T_mult", 1), p.pop("eta_min", 0.0))
    if name == "step":
        step_size, gamma = p.pop("step_size"), p.pop("gamma", 0.1)
        return lambda t: base * gamma ** (t // step_size)
    return lambda t: base  # constant


def _with_warmup(fn: Callable[[int], float], base: float, epochs: int, start: Optional[float]):
    """LinearLR(start / base -> 1 over ``epochs``) then ``fn`` restarted at 0, as torch's SequentialLR."""
    start = base / 10 if start is None else float(start)
    return lambda t: start + (base - start) * t / epochs if t < epochs else fn(t - epochs)


REQUIRED = {"one_cycle_linear": ("max_lr", "min_lr", "peak_epoch"), "onecycle": ("max_lr",), "step": ("step_size",),
            "cyclic": ("base_lr", "max_lr"), "cosine_warm_restarts": ("T_0",)}
_MOMENTUM = ("cycle_momentum", "base_momentum", "max_momentum")
KNOWN = {"constant": (), "one_cycle_linear": (), "step": ("gamma",), "cosine": ("T_max", "eta_min"),
         "cosine_warm_restarts": ("T_mult", "eta_min"),
         "onecycle": ("pct_start", "div_factor", "final_div_factor", "anneal_strategy") + _MOMENTUM,
         "cyclic": ("step_size_up", "step_size_down", "mode", "gamma") + _MOMENTUM}
_ANY = ("lr", "warmup_epochs", "warmup_start_lr")
_TORCH_SCHEDULERS = {"onecycle": (torch.optim.lr_scheduler.OneCycleLR, {"total_steps": 100}),
                     "cyclic": (torch.optim.lr_scheduler.CyclicLR, {}),
                     "plateau": (torch.optim.lr_scheduler.ReduceLROnPlateau, {})}


def _torch_checks(spec: ScheduleSpec, where: str) -> None:
    """Build torch's own scheduler from ``spec.params`` on a throwaway optimizer, so that its checks (pct_start in
    [0, 1], a known anneal_strategy or mode, factor < 1, ...) run before any work; its error becomes a ConfigError."""
    if spec.name not in _TORCH_SCHEDULERS:
        return
    if not isinstance(spec.params.get("cycle_momentum", True), bool):  # torch would take "false" as true
        raise ConfigError(f"{where}: scheduler {spec.name!r}: cycle_momentum must be true or false, "
                          f"got {spec.params['cycle_momentum']!r}")
    cls, extra = _TORCH_SCHEDULERS[spec.name]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    try:
        cls(optimizer, **{k: v for k, v in spec.params.items() if k not in _ANY}, **extra)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"{where}: scheduler {spec.name!r} {dict(spec.params)}: {exc}") from None


def check_spec(spec: ScheduleSpec, where: str = "scheduler") -> None:
    """Raise UnknownNameError for a name not in ``SCHEDULE_NAMES``, ConfigError for a missing or unknown param, a
    value torch's own OneCycleLR / CyclicLR / ReduceLROnPlateau refuses, or a warm-up on a per-step schedule (for
    ``Recipe.validate`` and the runner, before any work)."""
    if spec.name not in SCHEDULE_NAMES:
        raise UnknownNameError(f"{where}: unknown scheduler {spec.name!r}; valid schedulers: "
                               f"{', '.join(SCHEDULE_NAMES)}")
    missing = [k for k in REQUIRED.get(spec.name, ()) if k not in spec.params]
    if missing:
        raise ConfigError(f"{where}: scheduler {spec.name!r} needs the parameter(s) {missing}")
    if spec.name == "plateau":
        known = set(inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau).parameters) - {"optimizer"}
    else:
        known = set(REQUIRED.get(spec.name, ()) + KNOWN[spec.name] + _ANY)
    unknown = sorted(set(spec.params) - known)
    if unknown:
        raise ConfigError(f"{where}: scheduler {spec.name!r} has no parameter(s) {unknown}; "
                          f"its parameters: {', '.join(sorted(known))}")
    _torch_checks(spec, where)
    if spec.params.get("warmup_epochs") and spec.name not in ("cosine", "cosine_warm_restarts", "step", "constant"):
        raise ConfigError(f"{where}: warmup_epochs only combines with per-epoch schedules, not {spec.name!r}")


StepFn = Callable[[int], float]


def step_function(spec: ScheduleSpec, steps_per_epoch: int, epochs: int,
                  base_lr: float) -> Tuple[StepFn, Optional[StepFn]]:
    """``(lr_fn, momentum_fn or None)`` of the optimizer step for a checked ``spec`` over ``epochs`` epochs of
    ``steps_per_epoch`` steps; ``base_lr`` is where a schedule without an ``lr`` param starts. "onecycle" and
    "cyclic" cycle the momentum as torch does by default (``cycle_momentum=False`` turns it off)."""
    p = dict(spec.params)
    base = float(p.pop("lr", base_lr))
    warmup, warmup_start = int(p.pop("warmup_epochs", 0) or 0), p.pop("warmup_start_lr", None)
    total = steps_per_epoch * epochs
    if spec.name == "one_cycle_linear":
        peak = int(round(p["peak_epoch"] * steps_per_epoch))
        if peak >= total:  # a shortened run (--epochs 2) still rises and falls: peak at 20 % of it (S10: 5 of 24)
            peak = min(total - 1, int(round(0.2 * total)))
        return linear_one_cycle(float(p["max_lr"]), float(p["min_lr"]), total, peak), None
    if spec.name == "onecycle":  # torch OneCycleLR's defaults
        max_lr, start = p["max_lr"], p["max_lr"] / p.get("div_factor", 25.0)
        shape = dict(total_steps=total, pct_start=p.get("pct_start", 0.3),
                     anneal_strategy=p.get("anneal_strategy", "cos"))
        lr = torch_one_cycle(start, max_lr, start / p.get("final_div_factor", 1e4), **shape)
        low, high = p.get("base_momentum", 0.85), p.get("max_momentum", 0.95)
        return lr, (torch_one_cycle(high, low, high, **shape) if p.get("cycle_momentum", True) else None)
    if spec.name == "cyclic":  # torch CyclicLR's defaults
        up = max(1, int(p.get("step_size_up", max(1, epochs // 2)) * steps_per_epoch))
        down = up if p.get("step_size_down") is None else max(1, int(p["step_size_down"] * steps_per_epoch))
        shape = dict(up=up, down=down, mode=p.get("mode", "triangular"), gamma=p.get("gamma", 1.0))
        high, low = p.get("max_momentum", 0.9), p.get("base_momentum", 0.8)
        return (cyclic(p["base_lr"], p["max_lr"], **shape),
                cyclic(high, low, **shape) if p.get("cycle_momentum", True) else None)
    fn = _epoch_fn(spec.name, p, base, max(1, epochs - warmup))
    if warmup:
        fn = _with_warmup(fn, base, warmup, warmup_start)
    return (lambda step: fn(step // steps_per_epoch)), None  # constant within an epoch, as torch's per-epoch stepping


def build_schedule(spec: Optional[ScheduleSpec], optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                   epochs: int):
    """The schedule ``spec`` (or dict) describes: a :class:`StepSchedule` starting from the optimizer's initial LR, a
    ReduceLROnPlateau ("plateau"), or None (no spec). Raises as :func:`check_spec`, and ConfigError for a
    momentum-cycling schedule on an optimizer with neither momentum nor betas (as torch does)."""
    if spec is None:
        return None
    spec = ScheduleSpec(**spec) if isinstance(spec, dict) else spec
    check_spec(spec)
    if spec.name == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **spec.params)
        plateau.interval = "plateau"
        return plateau
    schedule = StepSchedule([(0, *step_function(spec, steps_per_epoch, epochs, initial_lr(optimizer)))])
    schedule.check_optimizer(optimizer)
    return schedule


def phase_schedule(phases: Sequence[Any], steps_per_epoch: int, epochs: int, base_lr: float) -> Optional[StepSchedule]:
    """One piecewise :class:`StepSchedule` for validated phases (with ``start`` and ``scheduler``), or None when no
    phase declares a schedule. A phase's schedule runs until the next one that declares one; before the first, the
    LR is ``base_lr``."""
    starts = [i for i, p in enumerate(phases) if p.scheduler is not None]
    if not starts:
        return None
    pieces: List[Tuple] = []
    if phases[starts[0]].start > 1:
        pieces.append((0, lambda s: base_lr))
    for n, i in enumerate(starts):
        end = phases[starts[n + 1]].start - 1 if n + 1 < len(starts) else epochs
        span = max(1, min(end, epochs) - phases[i].start + 1)
        pieces.append(((phases[i].start - 1) * steps_per_epoch,
                       *step_function(phases[i].scheduler, steps_per_epoch, span, base_lr)))
    return StepSchedule(pieces)


def initial_lr(optimizer: torch.optim.Optimizer) -> float:
    """The LR the optimizer was built with (``initial_lr``, recorded by ``fit`` and torch schedulers), else its LR."""
    group = optimizer.param_groups[0]
    return float(group.get("initial_lr", group["lr"]))
