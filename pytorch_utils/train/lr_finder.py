"""LR range test (torch-lr-finder) suggesting ``lr_max`` and ``lr_min = lr_max / div`` (the S10 One Cycle range),
with exact state restoration. The plot is ``pytorch_utils.viz.plot_lr_finder`` (train never imports viz)."""
import contextlib
import io
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch_lr_finder
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from pytorch_utils.errors import ConfigError
from pytorch_utils.utils import amp_dtype_for, model_device, preserved, resolve_device

STEP_MODES = ("exp", "linear")
SUGGESTIONS = ("steepest", "valley")
# Where the valley suggestion sits along the longest descent (0 = its top, 1 = its bottom).
VALLEY_FRACTION = 2 / 3


@dataclass(repr=False)
class LRFinderResult:
    """Outcome of :func:`find_lr`: the curve (``lrs``, ``raw_losses``, ``losses`` re-smoothed from ``skip_start // 2``),
    ``lr_max = lrs[suggestion_index]``, ``lr_min = lr_max / div``, ``diverged`` (stopped before ``end_lr``: loss over
    ``diverge_th`` x best, or NaN/inf) and the sweep settings (skips as resolved) for the plot."""

    lrs: List[float]
    losses: List[float]
    lr_max: float
    lr_min: float
    suggestion: str
    suggestion_index: int
    diverged: bool
    div: float
    start_lr: float
    end_lr: float
    num_iter: int
    step_mode: str
    skip_start: int
    skip_end: int
    raw_losses: Optional[List[float]] = None

    def __repr__(self) -> str:  # the full curves would flood a notebook cell
        return (f"LRFinderResult(lr_max={self.lr_max:.3g}, lr_min={self.lr_min:.3g} (= lr_max / {self.div:g}), "
                f"suggestion={self.suggestion!r}, suggestion_index={self.suggestion_index}, points={len(self.lrs)}, "
                f"diverged={self.diverged})")


# Default skips as fractions of the sweep: the start still carries the first batches' noise, the end divergence.
SKIP_START_FRACTION, MIN_SKIP_START = 0.10, 2
SKIP_END_FRACTION, MIN_SKIP_END = 0.05, 1


def default_skips(num_points: int):
    """``(skip_start, skip_end)`` for a curve of ``num_points``: 10% and 5% of it, at least 2 and 1 (100 -> 10, 5)."""
    return (max(MIN_SKIP_START, int(SKIP_START_FRACTION * num_points)),
            max(MIN_SKIP_END, int(SKIP_END_FRACTION * num_points)))


def _resolve_skips(num_points: int, skip_start: Optional[int], skip_end: Optional[int]):
    auto_start, auto_end = default_skips(num_points)
    return (auto_start if skip_start is None else skip_start), (auto_end if skip_end is None else skip_end)


def _window(lrs: Sequence[float], losses: Sequence[float], skip_start: Optional[int], skip_end: Optional[int]):
    """``(x, y, skip_start, minimum)``: LRs/losses from ``skip_start`` to ``len - skip_end``, argmin of ``y``."""
    if len(lrs) != len(losses):
        raise ConfigError(f"lrs and losses differ in length ({len(lrs)} vs {len(losses)})")
    n = len(losses)
    skip_start, skip_end = _resolve_skips(n, skip_start, skip_end)
    if skip_start < 0 or skip_end < 0:
        raise ConfigError(f"skip_start and skip_end must be >= 0, got {skip_start} and {skip_end}")
    if n < skip_start + skip_end + 2:
        raise ConfigError(f"need at least skip_start + skip_end + 2 = {skip_start + skip_end + 2} loss points to "
                          f"suggest an LR, got {n}")
    stop = n - skip_end
    x = np.asarray(lrs[skip_start:stop], dtype=np.float64)
    y = np.asarray(losses[skip_start:stop], dtype=np.float64)
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(x)) and np.all(x > 0)):
        raise ConfigError("the LRs and losses considered for a suggestion must be finite (and the LRs > 0); cut the "
                          "curve before the first NaN/inf loss")
    return x, y, skip_start, int(np.argmin(y))  # argmin: the first of equal minima


def _warn_on_edge(rule: str, pick: int, minimum: int, x: np.ndarray, skip_start: int) -> None:
    """Warn when a suggestion sits on an edge of its search range, where it is least trustworthy."""
    where = None
    if minimum == 0:
        where = (f"the smoothed loss never fell below its value at skip_start={skip_start} (lr {x[0]:.3g}): it is "
                 f"already rising there, so the sweep starts too high; lower start_lr")
    elif pick == 0:
        # Steepest at the very first candidate: usually the tail of a rough start, not the real descent.
        where = (f"it is the first point after skip_start={skip_start} (lr {x[0]:.3g}), where the loss may still be "
                 f"settling after a rough start; raise skip_start or use suggestion='valley'")
    elif pick == minimum == len(x) - 1:
        where = (f"the loss was still falling fastest at the last point considered (lr {x[minimum]:.3g}); raise "
                 f"end_lr (or num_iter) so that the sweep reaches the loss minimum")
    elif pick == minimum:
        where = (f"it is the loss minimum itself (lr {x[minimum]:.3g}), where training is about to become "
                 f"unstable; check the plot")
    if where:
        warnings.warn(f"LR suggestion {rule!r} landed on the edge of its search range: {where}", RuntimeWarning,
                      stacklevel=3)


def suggest_steepest(lrs: Sequence[float], losses: Sequence[float], skip_start: Optional[int] = None,
                     skip_end: Optional[int] = None) -> int:
    """Index of the most negative d(loss)/d(log10 lr) from ``skip_start`` (None: :func:`default_skips`) up to the
    loss minimum before the last ``skip_end`` points (past it the loss rises); warns (RuntimeWarning) on an edge.
    ConfigError: fewer than ``skip_start + skip_end + 2`` points, mismatched lengths, or non-finite values."""
    x, y, skip_start, minimum = _window(lrs, losses, skip_start, skip_end)
    # Over the whole window, so the slope at the minimum is a central difference; np.gradient takes the uneven
    # spacing of a linear sweep.
    grad = np.gradient(y, np.log10(x))
    pick = int(np.argmin(grad[:minimum + 1]))
    _warn_on_edge("steepest", pick, minimum, x, skip_start)
    return skip_start + pick


def suggest_valley(lrs: Sequence[float], losses: Sequence[float], skip_start: Optional[int] = None,
                   skip_end: Optional[int] = None) -> int:
    """Index 2/3 of the way down the longest strictly decreasing subsequence of the loss (after fastai's ``valley``;
    batch-noise bumps do not cut it short). Same search range, warning and errors as :func:`suggest_steepest`."""
    x, y, skip_start, minimum = _window(lrs, losses, skip_start, skip_end)
    y = y[:minimum + 1]
    n = len(y)
    length = np.ones(n, dtype=np.int64)   # length of the longest decreasing run ending at i
    first = np.arange(n)                  # where that run starts
    for i in range(1, n):
        higher = np.nonzero(y[:i] > y[i])[0]
        if higher.size:
            j = higher[np.argmax(length[higher])]  # earliest of the longest: the widest stretch
            length[i] = length[j] + 1
            first[i] = first[j]
    end = int(np.argmax(length))  # the first, i.e. shallowest-LR, of the longest runs
    start = int(first[end])
    pick = start + int(round(VALLEY_FRACTION * (end - start)))
    _warn_on_edge("valley", pick, minimum, x, skip_start)
    return skip_start + pick


def suggest_index(lrs: Sequence[float], losses: Sequence[float], suggestion: str = "steepest",
                  skip_start: Optional[int] = None, skip_end: Optional[int] = None) -> int:
    """:func:`suggest_steepest` or :func:`suggest_valley` by name; ConfigError for an unknown name."""
    if suggestion == "steepest":
        return suggest_steepest(lrs, losses, skip_start, skip_end)
    if suggestion == "valley":
        return suggest_valley(lrs, losses, skip_start, skip_end)
    raise ConfigError(f"unknown LR suggestion {suggestion!r}; use one of {', '.join(map(repr, SUGGESTIONS))}")


def restart_smoothing(smoothed: Sequence[float], smooth_f: float, start: int) -> List[float]:
    """``smoothed`` up to ``start``, then torch-lr-finder's smoothing restarted at ``raw[start]`` (a list): a rough
    start would otherwise bias the curve for dozens of steps, and that slow decay looks like the steepest descent."""
    s = np.asarray(smoothed, dtype=np.float64)
    if smooth_f == 0 or len(s) == 0:
        return s.tolist()
    raw = recover_raw(s, smooth_f)
    out = s.copy()
    out[start] = raw[start]
    for i in range(start + 1, len(s)):
        out[i] = smooth_f * raw[i] + (1 - smooth_f) * out[i - 1]
    return out.tolist()


def recover_raw(smoothed: Sequence[float], smooth_f: float) -> np.ndarray:
    """The raw losses behind torch-lr-finder's record ``s[i] = f * raw[i] + (1 - f) * s[i-1]``; float64 array."""
    s = np.asarray(smoothed, dtype=np.float64)
    if smooth_f == 0:
        return s.copy()
    return np.concatenate([s[:1], (s[1:] - (1 - smooth_f) * s[:-1]) / smooth_f])


# What torch's LRScheduler patches onto its optimizer; the sweep's scheduler must not leave them behind.
_OPTIMIZER_PATCHED_ATTRS = ("step", "_opt_called")


@contextlib.contextmanager
def _parked(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Park pending gradients and optimizer state aside for the sweep and put the same objects back (``preserved``
    restores values; this keeps identity for whoever holds a live ``.grad`` or Adam moment)."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    state = optimizer.state
    attrs = {k: optimizer.__dict__[k] for k in _OPTIMIZER_PATCHED_ATTRS if k in optimizer.__dict__}
    device = model_device(model)
    optimizer.state = type(state)(state.default_factory) if hasattr(state, "default_factory") else {}
    optimizer.state.update({p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                            for p, st in state.items()})
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        model.to(device)  # torch-lr-finder moved it to the sweep device
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.state = state
        for key in _OPTIMIZER_PATCHED_ATTRS:
            optimizer.__dict__.pop(key, None)
        optimizer.__dict__.update(attrs)


class _Batches(TrainDataLoaderIter):
    """torch-lr-finder's restarting iterator over any iterable of ``(inputs, targets, *rest)`` batches."""

    def inputs_labels_from_batch(self, batch_data):
        if not isinstance(batch_data, (list, tuple)) or len(batch_data) < 2:
            raise ConfigError(f"the LR finder needs (inputs, targets) batches, got {type(batch_data).__name__}")
        return batch_data[0], batch_data[1]

    def __next__(self):
        try:
            return super().__next__()
        except StopIteration:
            # torch-lr-finder restarts an exhausted loader once; a second StopIteration means it yields nothing.
            raise ConfigError("the training loader yielded no batches") from None


def _check_number(name: str, value, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return float(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _validate(start_lr, end_lr, num_iter, step_mode, smooth_f, diverge_th, suggestion, div, skip_start, skip_end):
    start_lr = _check_number("start_lr", start_lr)
    end_lr = _check_number("end_lr", end_lr)
    if end_lr <= start_lr:
        raise ConfigError(f"end_lr must be greater than start_lr, got start_lr={start_lr:g}, end_lr={end_lr:g}")
    num_iter = _check_int("num_iter", num_iter, 2)
    auto = [name for name, value in (("skip_start", skip_start), ("skip_end", skip_end)) if value is None]
    skip_start, skip_end = _resolve_skips(num_iter, skip_start, skip_end)
    skip_start = _check_int("skip_start", skip_start, 0)
    skip_end = _check_int("skip_end", skip_end, 0)
    if num_iter < skip_start + skip_end + 2:
        how = (f" ({' and '.join(auto)} by default: 10% and 5% of num_iter, at least {MIN_SKIP_START} and "
               f"{MIN_SKIP_END})" if auto else "")
        raise ConfigError(f"num_iter={num_iter} leaves too few points to suggest an LR: need num_iter >= "
                          f"skip_start + skip_end + 2 = {skip_start + skip_end + 2} with skip_start={skip_start}, "
                          f"skip_end={skip_end}{how}")
    if step_mode not in STEP_MODES:
        raise ConfigError(f"unknown step_mode {step_mode!r}; use one of {', '.join(map(repr, STEP_MODES))}")
    if suggestion not in SUGGESTIONS:
        raise ConfigError(f"unknown LR suggestion {suggestion!r}; use one of {', '.join(map(repr, SUGGESTIONS))}")
    smooth_f = _check_number("smooth_f", smooth_f, positive=False)
    if not 0 <= smooth_f < 1:
        raise ConfigError(f"smooth_f must be in [0, 1), got {smooth_f:g}")
    diverge_th = _check_number("diverge_th", diverge_th)
    if diverge_th <= 1:
        raise ConfigError(f"diverge_th must be > 1 (stop when loss > diverge_th x best loss), got {diverge_th:g}")
    div = _check_number("div", div)
    if div < 1:
        raise ConfigError(f"div must be >= 1 so that lr_min = lr_max / div <= lr_max, got {div:g}")
    return start_lr, end_lr, num_iter, smooth_f, diverge_th, div, skip_start, skip_end


@contextlib.contextmanager
def _quiet_bar(quiet: bool):
    """Disable torch-lr-finder's module-level tqdm bar for the duration (it has no switch of its own)."""
    module = torch_lr_finder.lr_finder
    original = module.tqdm
    if quiet:
        module.tqdm = lambda *a, **kw: original(*a, **{**kw, "disable": True})
    try:
        yield
    finally:
        module.tqdm = original


def find_lr(model: nn.Module, optimizer: torch.optim.Optimizer, criterion, train_loader, start_lr: float = 1e-7,
            end_lr: float = 10, num_iter: int = 100, step_mode: str = "exp", smooth_f: float = 0.05,
            diverge_th: float = 5, suggestion: str = "steepest", div: float = 10, device=None,
            amp: Optional[str] = None, skip_start: Optional[int] = None, skip_end: Optional[int] = None,
            progress: bool = True) -> LRFinderResult:
    """LR range test suggesting ``lr_max`` and ``lr_min = lr_max / div`` (an :class:`LRFinderResult`); the model,
    optimizer, gradients, train/eval modes and RNG states come back bit for bit, also when the sweep raises.

    ``train_loader``: any iterable of ``(inputs, targets)`` batches. ``start_lr`` ... ``diverge_th`` go to
    torch-lr-finder's ``range_test``; skips None: :func:`default_skips`; ``amp``: None, "bf16", "fp16" or "auto".
    ConfigError: bad arguments or batches, or fewer than ``skip_start + skip_end + 2`` finite losses recorded.
    """
    start_lr, end_lr, num_iter, smooth_f, diverge_th, div, skip_start, skip_end = _validate(
        start_lr, end_lr, num_iter, step_mode, smooth_f, diverge_th, suggestion, div, skip_start, skip_end)
    if next(model.parameters(), None) is None:
        raise ConfigError("the model has no parameters to train")
    with contextlib.suppress(TypeError):  # iterables without a length (IterableDataset loaders) are allowed
        if len(train_loader) == 0:
            raise ConfigError("the training loader is empty")
    device = model_device(model) if device is None else resolve_device(device, fallback=False)
    amp_dtype = amp_dtype_for(amp, device)

    with _parked(model, optimizer), preserved(model, optimizer):
        lrs, losses, best = _sweep(model, optimizer, criterion, train_loader, device, amp_dtype, progress,
                                   dict(start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, step_mode=step_mode,
                                        smooth_f=smooth_f, diverge_th=diverge_th))
    finite = np.isfinite(losses)
    usable = len(losses) if finite.all() else int(np.argmin(finite))  # points before the first NaN/inf
    diverged = (usable < len(losses) or len(losses) < num_iter
                or (usable > 0 and losses[-1] > diverge_th * float(best)))
    if usable < skip_start + skip_end + 2:
        raise ConfigError(
            f"the LR sweep recorded only {usable} finite loss points before diverging (need skip_start + skip_end + 2"
            f" = {skip_start + skip_end + 2}); lower start_lr ({start_lr:g}) or end_lr ({end_lr:g}), raise diverge_th "
            f"({diverge_th:g}) or num_iter ({num_iter}), or reduce skip_start/skip_end")
    raw = recover_raw(losses[:usable], smooth_f).tolist() + losses[usable:]
    losses = restart_smoothing(losses[:usable], smooth_f, skip_start // 2) + losses[usable:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = suggest_index(lrs[:usable], losses[:usable], suggestion, skip_start, skip_end)
    for w in caught:  # re-issued so that they point at the find_lr call
        warnings.warn(w.message, w.category, stacklevel=2)
    # The schedule's float maths can land an ulp outside the range; the suggestion must stay inside it.
    lr_max = min(max(lrs[index], start_lr), end_lr)
    return LRFinderResult(
        lrs=lrs, losses=losses, lr_max=lr_max, lr_min=lr_max / div, suggestion=suggestion, suggestion_index=index,
        diverged=bool(diverged), div=div, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, step_mode=step_mode,
        skip_start=skip_start, skip_end=skip_end, raw_losses=raw,
    )


def _sweep(model, optimizer, criterion, train_loader, device, amp_dtype, progress, range_kwargs):
    """torch-lr-finder's ``range_test`` on the live model/optimizer; returns ``(lrs, smoothed losses, best loss)``."""
    # torch-lr-finder refuses optimizers with a scheduler attached ("initial_lr"); ``preserved`` puts the key back.
    for group in optimizer.param_groups:
        group.pop("initial_lr", None)
    amp_kwargs = {}
    if amp_dtype is not None:
        amp_kwargs = dict(amp_backend="torch", amp_config={"device_type": device.type, "dtype": amp_dtype},
                          grad_scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16))
    finder = LRFinder(model, optimizer, criterion, device=device, memory_cache=True, **amp_kwargs)
    batches = train_loader if isinstance(train_loader, TrainDataLoaderIter) else _Batches(train_loader)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_bar(not progress):
        # range_test's get_lr() warnings and plot() hints do not concern our users.
        warnings.filterwarnings("ignore", message=r".*get_last_lr\(\)")
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        finder.range_test(batches, **range_kwargs)
    return ([float(v) for v in finder.history["lr"]], [float(v) for v in finder.history["loss"]],
            finder.best_loss)
