"""Learning-rate schedules: one registry entry per name (:data:`SCHEDULES`), each a pure function of the optimizer
step (as nanoGPT's ``get_lr(it)``, so a checkpoint needs only the step count), declared as data (:class:`ScheduleSpec`).

The engine asks one thing of a schedule: ``schedule.apply(optimizer, step)`` writes the LR (and the momentum, where it
cycles) of applied step ``step`` before that step. ReduceLROnPlateau (metric-driven) is the one stateful exception; a
user's own torch scheduler comes in through :class:`TorchSchedule`. Where torch has the schedule, the formula is
torch's (tests/train/test_schedules.py compares them step by step).
"""
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from pytorch_utils.errors import ConfigError, UnknownNameError, check_fields

Curve = Callable[[int], float]
sched = torch.optim.lr_scheduler


@dataclass
class ScheduleSpec:
    """A schedule as data: a ``name`` in :data:`SCHEDULES` plus keyword ``params`` (times in epochs)."""

    name: str = "constant"
    params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_fields(self, "scheduler field")  # the types only: check_spec checks the name and params


# ---- annealing pieces (each equal to torch's scheduler of the same name) -------------------------------------------

def linear_one_cycle(max_lr: float, min_lr: float, total_steps: int, peak_step: int) -> Curve:
    """One Cycle with linear ramps and no annihilation (the S10 seed's recipe): ``min_lr`` at step 0, ``max_lr`` at
    ``peak_step``, back to ``min_lr`` at ``total_steps - 1`` and never below it (unlike torch's OneCycleLR)."""
    down = max(1, total_steps - 1 - peak_step)

    def lr(step: int) -> float:
        if step <= peak_step:
            return min_lr + (max_lr - min_lr) * (step / peak_step if peak_step > 0 else 1.0)
        return max(min_lr, max_lr - (max_lr - min_lr) * min(1.0, (step - peak_step) / down))
    return lr


def torch_one_cycle(start: float, peak: float, end: float, total_steps: int, pct_start: float = 0.3,
                    anneal_strategy: str = "cos") -> Curve:
    """``torch.optim.lr_scheduler.OneCycleLR``'s value at each step: ``start`` -> ``peak`` over the first
    ``pct_start`` of ``total_steps``, then -> ``end`` (LR: max_lr / div_factor -> max_lr -> that / final_div_factor;
    momentum: max_momentum -> base_momentum -> max_momentum)."""
    peak_end = float(pct_start * total_steps) - 1
    phases = ((0.0, peak_end, start, peak), (peak_end, total_steps - 1.0, peak, end))

    def value(step: int) -> float:
        first, last, a, b = phases[0] if step <= peak_end else phases[1]
        pct = min(1.0, (step - first) / max(last - first, 1e-12))  # a phase shorter than a step ends at once
        if anneal_strategy == "cos":
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (b - a) * pct + a
    return value


def cyclic(base: float, peak: float, up: int, down: int, mode: str = "triangular", gamma: float = 1.0) -> Curve:
    """``torch.optim.lr_scheduler.CyclicLR``'s value at each step: ``base`` -> ``peak`` over ``up`` steps, back over
    ``down`` (LR: base_lr -> max_lr; momentum: max_momentum -> base_momentum)."""
    total, ratio = float(up + down), up / float(up + down)

    def value(step: int) -> float:
        cycle = math.floor(1 + step / total)
        x = 1.0 + step / total - cycle
        scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        factor = {"triangular": 1.0, "triangular2": 1 / (2.0 ** (cycle - 1)), "exp_range": gamma ** step}[mode]
        return base + (peak - base) * scale * factor
    return value


def cosine(base: float, t_max: int, eta_min: float = 0.0) -> Curve:
    """CosineAnnealingLR: ``eta_min + (base - eta_min) (1 + cos(pi t / T_max)) / 2`` at epoch ``t``."""
    return lambda t: eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


def cosine_warm_restarts(base: float, t_0: int, t_mult: int = 1, eta_min: float = 0.0) -> Curve:
    """CosineAnnealingWarmRestarts at epoch ``t``: cosine over cycles of ``T_0``, ``T_0 * T_mult``, ... epochs."""
    def lr(t: int) -> float:
        if t_mult == 1:
            t_cur, t_i = t % t_0, t_0
        else:
            n = int(math.log(t / t_0 * (t_mult - 1) + 1, t_mult))
            t_cur, t_i = t - t_0 * (t_mult ** n - 1) / (t_mult - 1), t_0 * t_mult ** n
        return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
    return lr


# ---- the registry ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """One schedule name. ``curves(params, base_lr, steps_per_epoch, epochs)`` -> ``(lr_fn, momentum_fn or None)`` of
    the step (None for "plateau"); ``required``/``optional`` parameters; ``finder``: parameter -> "lr_max" or "lr_min",
    what an LR finder (or ``--lr``) fills; ``epoch_params``: parameters counted in epochs (the smoke profile scales
    them); ``sized_unless``: the shape follows the run's length unless this parameter is set ("" = always, None =
    never); ``below_span``: parameters that must be below the span's epochs; ``whole``: parameters that must be
    whole numbers; ``torch_cls``: torch's own scheduler, built once from the params (those it takes, plus
    ``torch_kwargs``) on a throwaway optimizer so torch's value checks run before any work."""

    curves: Optional[Callable]
    required: Tuple[str, ...] = ()
    optional: Tuple[str, ...] = ()
    finder: Dict[str, str] = field(default_factory=lambda: {"lr": "lr_max"})
    epoch_params: Tuple[str, ...] = ()
    sized_unless: Optional[str] = None
    below_span: Tuple[str, ...] = ()
    whole: Tuple[str, ...] = ()
    torch_cls: Optional[type] = None
    torch_kwargs: Dict[str, Any] = field(default_factory=dict)


def _epochwise(fn: Callable[[Dict[str, Any], float, int], Curve]):
    """A per-epoch curve ``fn(params, base_lr, span)`` of the epoch, with the optional linear warm-up (torch's
    LinearLR from ``warmup_start_lr`` (default base / 10) then the curve restarted at 0, as SequentialLR)."""
    def curves(p, base_lr, steps_per_epoch, epochs):
        base, warmup = float(p.get("lr", base_lr)), int(p.get("warmup_epochs", 0))
        start = float(p.get("warmup_start_lr", base / 10))
        curve = fn(p, base, max(1, epochs - warmup))
        by_epoch = (lambda t: start + (base - start) * t / warmup if t < warmup else curve(t - warmup))
        return (lambda step: by_epoch(step // steps_per_epoch)), None
    return curves


def _one_cycle_linear(p, base_lr, steps_per_epoch, epochs):
    total = steps_per_epoch * epochs
    return linear_one_cycle(p["max_lr"], p["min_lr"], total, round(p["peak_epoch"] * steps_per_epoch)), None


def _onecycle(p, base_lr, steps_per_epoch, epochs):
    start = p["max_lr"] / p.get("div_factor", 25.0)
    shape = dict(total_steps=steps_per_epoch * epochs, pct_start=p.get("pct_start", 0.3),
                 anneal_strategy=p.get("anneal_strategy", "cos"))
    low, high = p.get("base_momentum", 0.85), p.get("max_momentum", 0.95)
    return (torch_one_cycle(start, p["max_lr"], start / p.get("final_div_factor", 1e4), **shape),
            torch_one_cycle(high, low, high, **shape) if p.get("cycle_momentum", True) else None)


def _cyclic(p, base_lr, steps_per_epoch, epochs):
    up = max(1, int(p.get("step_size_up", max(1, epochs // 2)) * steps_per_epoch))
    down = up if p.get("step_size_down") is None else max(1, int(p["step_size_down"] * steps_per_epoch))
    shape = dict(up=up, down=down, mode=p.get("mode", "triangular"), gamma=p.get("gamma", 1.0))
    high, low = p.get("max_momentum", 0.9), p.get("base_momentum", 0.8)
    return (cyclic(p["base_lr"], p["max_lr"], **shape),
            cyclic(high, low, **shape) if p.get("cycle_momentum", True) else None)


_WARMUP = ("lr", "warmup_epochs", "warmup_start_lr")
_MOMENTUM = ("cycle_momentum", "base_momentum", "max_momentum")
SCHEDULES: Dict[str, Schedule] = {
    "constant": Schedule(_epochwise(lambda p, base, span: lambda t: base), optional=_WARMUP,
                         epoch_params=("warmup_epochs",)),
    "step": Schedule(_epochwise(lambda p, base, span: lambda t: base * p.get("gamma", 0.1) ** (t // p["step_size"])),
                     required=("step_size",), optional=("gamma",) + _WARMUP,
                     epoch_params=("step_size", "warmup_epochs"), whole=("step_size", "warmup_epochs")),
    "cosine": Schedule(_epochwise(lambda p, base, span: cosine(base, p.get("T_max", span), p.get("eta_min", 0.0))),
                       optional=("T_max", "eta_min") + _WARMUP, epoch_params=("T_max", "warmup_epochs"),
                       sized_unless="T_max", whole=("T_max", "warmup_epochs")),
    "cosine_warm_restarts": Schedule(
        _epochwise(lambda p, base, span: cosine_warm_restarts(base, p["T_0"], p.get("T_mult", 1),
                                                              p.get("eta_min", 0.0))),
        required=("T_0",), optional=("T_mult", "eta_min") + _WARMUP, epoch_params=("T_0", "warmup_epochs"),
        whole=("warmup_epochs",), torch_cls=sched.CosineAnnealingWarmRestarts),
    "one_cycle_linear": Schedule(_one_cycle_linear, required=("max_lr", "min_lr", "peak_epoch"),
                                 finder={"max_lr": "lr_max", "min_lr": "lr_min"}, epoch_params=("peak_epoch",),
                                 sized_unless="", below_span=("peak_epoch",)),
    "onecycle": Schedule(_onecycle, required=("max_lr",), optional=("pct_start", "div_factor", "final_div_factor",
                                                                    "anneal_strategy") + _MOMENTUM,
                         finder={"max_lr": "lr_max"}, sized_unless="",
                         torch_cls=sched.OneCycleLR, torch_kwargs={"total_steps": 100}),
    "cyclic": Schedule(_cyclic, required=("base_lr", "max_lr"),
                       optional=("step_size_up", "step_size_down", "mode", "gamma") + _MOMENTUM,
                       finder={"max_lr": "lr_max", "base_lr": "lr_min"},
                       epoch_params=("step_size_up", "step_size_down"), sized_unless="step_size_up",
                       torch_cls=sched.CyclicLR),
    "plateau": Schedule(None, optional=("lr",) + tuple(inspect.signature(sched.ReduceLROnPlateau).parameters)[1:],
                        torch_cls=sched.ReduceLROnPlateau),
}


def follows_run_length(spec: Optional[ScheduleSpec]) -> bool:
    """True when the schedule's shape depends on the length of the span it runs for."""
    kind = SCHEDULES[spec.name] if spec is not None else None
    return kind is not None and kind.sized_unless is not None and (kind.sized_unless == ""
                                                                   or kind.sized_unless not in spec.params)


def with_found_lrs(spec: Optional[ScheduleSpec], lr_max: float, lr_min: float) -> Optional[ScheduleSpec]:
    """``spec`` with the LRs an LR finder (or ``--lr``) found written into the parameters its entry names: max_lr /
    min_lr / base_lr for the cycles, the start ``lr`` for the others (plateau included)."""
    if spec is None:
        return None
    found = {"lr_max": lr_max, "lr_min": lr_min}
    return ScheduleSpec(spec.name, {**spec.params, **{k: found[v] for k, v in SCHEDULES[spec.name].finder.items()}})


def check_spec(spec: ScheduleSpec, where: str = "scheduler", span: Optional[int] = None) -> None:
    """The one check of a schedule spec, at the doors (recipe validation, ``fit``): UnknownNameError for a name not in
    :data:`SCHEDULES`; ConfigError for a missing or unknown parameter, a value torch's own scheduler refuses (its reason
    quoted) or one the entry's rules refuse (numbers, whole numbers, with ``span`` (the epochs it runs for) a peak
    past the span)."""
    if spec.name not in SCHEDULES:
        raise UnknownNameError(f"{where}: unknown scheduler {spec.name!r}; valid schedulers: {', '.join(SCHEDULES)}")
    kind, p = SCHEDULES[spec.name], spec.params
    missing = [k for k in kind.required if k not in p]
    unknown = sorted(set(p) - set(kind.required + kind.optional))
    if missing or unknown:
        raise ConfigError(f"{where} {spec.name!r} " + (f"needs the parameter(s) {missing}" if missing else
                          f"has no parameter(s) {unknown}; its parameters: "
                          f"{', '.join(sorted(kind.required + kind.optional))}"))

    def refuse(expected: str, keys, ok: Callable[[str, Any], bool]) -> None:
        k = next((k for k in keys if k in p and not ok(k, p[k])), None)
        if k is not None:
            raise ConfigError(f"{where} {spec.name!r}: {k} {p[k]!r} must be {expected}")

    refuse("true or false", ("cycle_momentum",), lambda k, v: isinstance(v, bool))  # torch takes "false" as true
    refuse("a positive number", kind.epoch_params + tuple(kind.finder),
           lambda k, v: _positive(v) or (k == "warmup_epochs" and v == 0))
    refuse("a whole number", kind.whole, lambda k, v: isinstance(v, int))
    refuse("a number >= 0", () if kind.torch_cls else tuple(p), lambda k, v: _positive(v) or v == 0)  # ours
    refuse(f"below the {span} epochs it runs for", kind.below_span if span else (), lambda k, v: v < span)
    if kind.torch_cls is not None:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
        takes = inspect.signature(kind.torch_cls).parameters
        try:
            kind.torch_cls(optimizer, **{k: v for k, v in p.items() if k in takes}, **kind.torch_kwargs)
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise ConfigError(f"{where} {spec.name!r} {dict(p)}: {exc}") from None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


# ---- what the engine runs -------------------------------------------------------------------------------------------

class StepSchedule:
    """A schedule over ``total_steps`` applied steps, from ``pieces``: ``(first_step, lr_fn, momentum_fn or None)`` in
    order (a step uses the last piece starting at or before it, called with the step counted from that piece's
    start). A piece without a momentum function leaves the optimizer's momentum where it is (after a cycling piece,
    where the cycle ended, as when torch switches schedulers)."""

    def __init__(self, pieces: Sequence[Tuple[int, Curve, Optional[Curve]]], total_steps: int):
        assert pieces and pieces[0][0] == 0, "the first piece starts at step 0"
        self.pieces, self.total_steps = list(pieces), total_steps

    def _at(self, step: int, which: int) -> Optional[float]:
        start, *curves = next(p for p in reversed(self.pieces) if p[0] <= step)
        return None if curves[which] is None else float(curves[which](step - start))

    def __call__(self, step: int) -> float:
        """The LR of applied step ``step`` (0-based)."""
        return self._at(step, 0)

    def momentum(self, step: int) -> Optional[float]:
        """The momentum (SGD) or Adam's beta1 at ``step`` where a piece cycles it, else None."""
        return self._at(step, 1)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Write the LR (and cycled momentum) of ``step`` into every param group, where torch's cycle_momentum puts
        it: Adam's beta1, else SGD's momentum."""
        lr, momentum = self(step), self.momentum(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if momentum is not None and "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            elif momentum is not None:
                group["momentum"] = momentum

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """ConfigError when a piece cycles the momentum and ``optimizer`` has neither momentum nor betas."""
        if any(p[2] is not None for p in self.pieces) and not {"momentum", "betas"} & set(optimizer.defaults):
            raise ConfigError(f"a scheduler cycles the momentum, which {type(optimizer).__name__} does not have: "
                              "add 'cycle_momentum': False to its params")


class TorchSchedule:
    """The adapter for a user's own torch LR scheduler: ``apply(optimizer, step)`` steps it until it has been stepped
    once per applied step (``per_step=True``, as OneCycleLR/CyclicLR expect) or once per epoch of ``steps_per_epoch``
    steps; the scheduler writes the LR itself. Its ``state_dict`` is saved and restored with the checkpoint (a
    per-step torch scheduler is built for one run's total steps: a resume at another batch size is not rescaled)."""

    def __init__(self, scheduler, per_step: bool, steps_per_epoch: int = 1):
        self.scheduler, self.every = scheduler, 1 if per_step else steps_per_epoch
        self.done = 0  # scheduler steps taken by this adapter

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        while self.done < step // self.every:
            self.scheduler.step()
            self.done += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "done": self.done}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.done = state["done"]


def build_schedule(spec, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """The schedule ``spec`` (a :class:`ScheduleSpec` or dict) describes over ``epochs`` epochs of ``steps_per_epoch``
    applied steps: a :class:`StepSchedule` whose base LR is the optimizer's initial LR, a ReduceLROnPlateau
    ("plateau"; its ``lr`` param, if any, written into the optimizer), or None (no spec). Raises as :func:`check_spec`,
    and ConfigError for a momentum-cycling schedule on an optimizer with neither momentum nor betas (as torch does)."""
    if spec is None:
        return None
    spec = ScheduleSpec(**spec) if isinstance(spec, dict) else spec
    check_spec(spec, span=epochs)
    if SCHEDULES[spec.name].curves is None:  # ReduceLROnPlateau, stepped with the test loss
        params = dict(spec.params)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = params.pop("lr", group["lr"])
        return sched.ReduceLROnPlateau(optimizer, **params)
    curves = SCHEDULES[spec.name].curves(spec.params, initial_lr(optimizer), steps_per_epoch, epochs)
    schedule = StepSchedule([(0, *curves)], steps_per_epoch * epochs)
    schedule.check_optimizer(optimizer)
    return schedule


def phase_schedule(phases: Sequence[Any], steps_per_epoch: int, base_lr: float) -> Optional[StepSchedule]:
    """One piecewise :class:`StepSchedule` for validated phases (``start``, ``end``, ``scheduler``), or None when no
    phase declares a schedule. A phase's schedule runs from its start until the next phase that declares one (or the
    last phase's end), shaped for that span, so a shorter run trains the first epochs of it; before the first, the
    LR is ``base_lr``."""
    starts = [p for p in phases if p.scheduler is not None]
    if not starts:
        return None
    pieces: List[Tuple] = [] if starts[0].start == 1 else [(0, lambda s: base_lr, None)]
    for phase, end in zip(starts, [p.start - 1 for p in starts[1:]] + [phases[-1].end]):
        curves = SCHEDULES[phase.scheduler.name].curves(phase.scheduler.params, base_lr, steps_per_epoch,
                                                        end - phase.start + 1)
        pieces.append(((phase.start - 1) * steps_per_epoch, *curves))
    return StepSchedule(pieces, steps_per_epoch * phases[-1].end)


def as_schedule(scheduler, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """What ``fit`` runs for its ``scheduler`` argument: a spec (or dict) built for this run, a torch scheduler wrapped
    in :class:`TorchSchedule` (OneCycleLR/CyclicLR per step, others per epoch), ReduceLROnPlateau and schedules
    with ``apply`` as they are."""
    if scheduler is None or isinstance(scheduler, (ScheduleSpec, dict)):
        return build_schedule(scheduler, optimizer, steps_per_epoch, epochs)
    if isinstance(scheduler, sched.LRScheduler) and not isinstance(scheduler, sched.ReduceLROnPlateau):
        return TorchSchedule(scheduler, isinstance(scheduler, (sched.OneCycleLR, sched.CyclicLR)), steps_per_epoch)
    return scheduler


def check_length(schedule, run_steps: int) -> None:
    """ConfigError when a :class:`StepSchedule` (or a per-step torch scheduler with ``total_steps``, as OneCycleLR)
    was built for fewer applied steps than the run takes: its LR would sit at its last value for the rest without a
    word, or torch would fail mid-run."""
    total = getattr(schedule, "total_steps", getattr(getattr(schedule, "scheduler", None), "total_steps", None))
    if total is not None and getattr(schedule, "every", 1) == 1 and total < run_steps:
        raise ConfigError(f"the LR schedule was built for {total} optimizer steps but the run takes "
                          f"{run_steps}: build it with this run's epochs and steps per epoch, or pass fit the "
                          "ScheduleSpec itself")


def initial_lr(optimizer: torch.optim.Optimizer) -> float:
    """The LR the optimizer was built with (``initial_lr``, recorded by ``fit`` and torch schedulers), else its LR."""
    group = optimizer.param_groups[0]
    return float(group.get("initial_lr", group["lr"]))
