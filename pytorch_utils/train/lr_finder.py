"""LR range test (torch-lr-finder) with exact state restoration and an LR suggestion.

``find_lr`` runs torch-lr-finder's ``LRFinder.range_test`` (the LR grows from ``start_lr`` to ``end_lr`` over
``num_iter`` batches, the smoothed training loss is recorded) and turns the curve into a suggested ``lr_max`` and
``lr_min = lr_max / div`` - the pair the S10 recipe feeds to its One Cycle schedule. The suggestion is searched only
from ``skip_start`` up to the minimum of the smoothed loss: a dip after the loss has started to climb (typical of Adam
near divergence) is never picked. ``pytorch_utils.viz.plot_lr_finder(result)`` draws the curve with the suggestion
marked.

Design notes:
- The sweep trains the real model with the real optimizer. ``utils.preserved`` puts back, in ``finally``, the weights
  and buffers, per-module train/eval flags, the optimizer state and LRs, and the python/numpy/torch RNG states, so a
  ``fit`` run after ``find_lr`` is the run it would have been without the sweep. Pending gradients and the optimizer's
  state tensors are parked aside for the sweep and put back as the same objects.
- A rough start (the first few batches far above where the loss settles) would bias torch-lr-finder's exponentially
  smoothed curve for dozens of steps, and that slow decay looks like the steepest descent. The suggestion is therefore
  made on the raw losses re-smoothed from ``skip_start // 2`` on (see :func:`restart_smoothing`): the rough start
  lies in the skipped points and no longer leaks into the candidates.
- Loaders: a torch DataLoader or any iterable with ``(inputs, targets)`` batches (e.g. the GPU-resident loader) is
  wrapped in torch-lr-finder's ``TrainDataLoaderIter``, which restarts it when it runs out.
- AMP: torch-lr-finder (>= 0.2.2) runs the forward pass under ``torch.amp.autocast`` (``amp_backend="torch"``).
- The plot lives in ``pytorch_utils.viz.plot_lr_finder`` (``train`` never imports ``viz``).
"""
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
    """Outcome of :func:`find_lr`.

    Attributes:
        lrs: the LR of every sweep step.
        losses: the smoothed training loss at every step, re-smoothed from ``skip_start // 2`` (see above).
        lr_max: the suggested LR (``lrs[suggestion_index]``); the One Cycle peak in the S10 recipe.
        lr_min: ``lr_max / div``; the One Cycle start and end LR in the S10 recipe.
        suggestion: "steepest" or "valley", the rule that picked ``lr_max``.
        suggestion_index: index of ``lr_max`` in ``lrs``/``losses``.
        diverged: True when the loss blew up (passed ``diverge_th`` x best loss, or became NaN/inf) and the sweep
            stopped before ``end_lr``.
        div, start_lr, end_lr, num_iter, step_mode, skip_start, skip_end: the sweep settings, kept for the plot
            (``skip_start``/``skip_end`` as resolved, e.g. 10 and 5 for a 100-step sweep with the default skips).

    ``raw_losses`` holds the unsmoothed loss of every step (recovered from torch-lr-finder's smoothed record), and
    ``losses`` the curve the suggestion was made on (see :func:`restart_smoothing`). Plot it with
    :func:`pytorch_utils.viz.plot_lr_finder`.
    """

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


# ----------------------------------------------------------------------------------------------------------------------
# Suggestions (pure functions on a recorded curve)
# ----------------------------------------------------------------------------------------------------------------------

# Default skips, as fractions of the sweep length: ~10% at the start (the smoothed loss still carries the first
# batches' noise) and ~5% at the end (where a diverging loss ends the sweep), with floors for short sweeps.
SKIP_START_FRACTION, MIN_SKIP_START = 0.10, 2
SKIP_END_FRACTION, MIN_SKIP_END = 0.05, 1


def default_skips(num_points: int):
    """``(skip_start, skip_end)`` for a curve of ``num_points``: 10% and 5% of it, at least 2 and 1.

    A 100-step sweep skips 10 + 5 points (torch-lr-finder's usual defaults), a 50-step sweep 5 + 2, a 20-step sweep
    2 + 1, so short sweeps keep most of their points as candidates.
    """
    num_points = int(num_points)
    return (max(MIN_SKIP_START, int(SKIP_START_FRACTION * num_points)),
            max(MIN_SKIP_END, int(SKIP_END_FRACTION * num_points)))


def _resolve_skips(num_points: int, skip_start: Optional[int], skip_end: Optional[int]):
    auto_start, auto_end = default_skips(num_points)
    return (auto_start if skip_start is None else skip_start), (auto_end if skip_end is None else skip_end)


def _window(lrs: Sequence[float], losses: Sequence[float], skip_start: Optional[int], skip_end: Optional[int]):
    """The candidate window of a curve: ``(x, y, skip_start, minimum)`` where ``x``/``y`` are the LRs/losses from
    ``skip_start`` to ``len - skip_end`` and ``minimum`` is the position of the lowest loss in that window."""
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
        # A descent that is steepest at its very first candidate is usually the tail of a rough start (the first
        # batches far above the plateau), not the real descent: more skipped points, or the valley rule, help.
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
    """Index of the steepest descent: the most negative d(loss)/d(log10 lr) **at or before the minimum** of the loss.

    The rule (shared with :func:`suggest_valley`): drop the first ``skip_start`` and last ``skip_end`` points
    (warm-up noise at the start, divergence at the end); in what is left, find the lowest loss; only the points from
    the start of the window up to that minimum are candidates. An LR past the minimum is one where the loss is already
    rising - a later dip of a noisy or diverging curve (common with Adam) can be steep, but training there is
    unstable, so it is never picked. A :class:`RuntimeWarning` says when the pick lands on an edge of that range (the
    first candidate, or the minimum itself).

    Args:
        lrs: swept learning rates (all > 0, increasing).
        losses: the (already smoothed) losses, same length, finite in the window.
        skip_start, skip_end: points ignored at the ends; None = :func:`default_skips` of the curve length.
    Returns:
        an index into ``lrs``/``losses``.
    Raises:
        ConfigError: fewer than ``skip_start + skip_end + 2`` points, mismatched lengths, or non-finite values.
    """
    x, y, skip_start, minimum = _window(lrs, losses, skip_start, skip_end)
    # Gradient against log10(lr): the sweep is exponential, and a linear sweep gets the right slopes from the
    # non-uniform spacing that np.gradient accepts. It is taken over the whole window so that the slope at the
    # minimum is a central difference, then searched only up to the minimum.
    grad = np.gradient(y, np.log10(x))
    pick = int(np.argmin(grad[:minimum + 1]))
    _warn_on_edge("steepest", pick, minimum, x, skip_start)
    return skip_start + pick


def suggest_valley(lrs: Sequence[float], losses: Sequence[float], skip_start: Optional[int] = None,
                   skip_end: Optional[int] = None) -> int:
    """Index picked by the valley heuristic (after fastai's ``valley``): find the longest stretch over which the loss
    keeps going down, then take the point about 2/3 of the way down it.

    "Keeps going down" is the longest strictly decreasing subsequence of the loss, so small bumps from batch noise do
    not cut a stretch short; the stretch runs from that subsequence's first to its last point. Same search range as
    :func:`suggest_steepest`: after ``skip_start``, before ``skip_end``, and only up to the loss minimum (a descent
    after the curve has started to diverge is ignored); same edge warning.

    Returns:
        an index into ``lrs``/``losses``.
    Raises:
        ConfigError: fewer than ``skip_start + skip_end + 2`` points, mismatched lengths, or non-finite values.
    """
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
    """Dispatch to :func:`suggest_steepest` or :func:`suggest_valley` by name.

    Raises:
        ConfigError: an unknown suggestion name.
    """
    if suggestion == "steepest":
        return suggest_steepest(lrs, losses, skip_start, skip_end)
    if suggestion == "valley":
        return suggest_valley(lrs, losses, skip_start, skip_end)
    raise ConfigError(f"unknown LR suggestion {suggestion!r}; use one of {', '.join(map(repr, SUGGESTIONS))}")


def restart_smoothing(smoothed: Sequence[float], smooth_f: float, start: int) -> List[float]:
    """Undo torch-lr-finder's exponential smoothing and smooth again from ``start`` on.

    torch-lr-finder records ``s[0] = raw[0]`` and ``s[i] = smooth_f * raw[i] + (1 - smooth_f) * s[i-1]``, so the raw
    losses are recovered exactly as ``raw[i] = (s[i] - (1 - smooth_f) * s[i-1]) / smooth_f``. The returned curve is
    ``smoothed`` up to ``start`` and the same smoothing restarted at ``raw[start]`` after it: a few very high first
    losses (a rough start) then no longer bias the points after ``start``.

    Args:
        smoothed: the recorded (smoothed) losses; smooth_f: torch-lr-finder's factor in [0, 1) (0: no smoothing);
        start: index where the smoothing restarts (0 <= start < len).
    Returns:
        a list of floats, same length.
    """
    s = np.asarray(smoothed, dtype=np.float64)
    if smooth_f == 0 or len(s) == 0:
        return s.tolist()
    raw = recover_raw(s, smooth_f)
    out = s.copy()
    for i in range(start + 1, len(s)):
        out[i] = smooth_f * raw[i] + (1 - smooth_f) * (raw[start] if i == start + 1 else out[i - 1])
    out[start] = raw[start]
    return out.tolist()


def recover_raw(smoothed: Sequence[float], smooth_f: float) -> np.ndarray:
    """The raw losses behind torch-lr-finder's smoothed record (see :func:`restart_smoothing`); float64 array."""
    s = np.asarray(smoothed, dtype=np.float64)
    if smooth_f == 0 or len(s) == 0:
        return s.copy()
    raw = s.copy()
    raw[1:] = (s[1:] - (1 - smooth_f) * s[:-1]) / smooth_f
    return raw


# ----------------------------------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------------------------------

# Instance attributes that torch's LRScheduler patches onto the optimizer it drives (a wrapped ``step`` and a
# "step was called" flag); the sweep's scheduler must not leave them behind.
_OPTIMIZER_PATCHED_ATTRS = ("step", "_opt_called")
_MISSING = object()


@contextlib.contextmanager
def _parked(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Park pending gradients and the optimizer's state tensors aside for the sweep and put the same objects back.

    ``preserved`` restores values; this keeps identity, so whoever holds a live ``.grad`` or Adam moment (an
    in-memory checkpoint) sees the pre-sweep values, and removes what the sweep's scheduler patched on the optimizer.
    """
    params = list(model.parameters())
    grads = [p.grad for p in params]
    state = optimizer.state
    attrs = {k: optimizer.__dict__.get(k, _MISSING) for k in _OPTIMIZER_PATCHED_ATTRS}
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
        for key, value in attrs.items():
            if value is _MISSING:
                optimizer.__dict__.pop(key, None)
            else:
                optimizer.__dict__[key] = value


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


def find_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion,
    train_loader,
    start_lr: float = 1e-7,
    end_lr: float = 10,
    num_iter: int = 100,
    step_mode: str = "exp",
    smooth_f: float = 0.05,
    diverge_th: float = 5,
    suggestion: str = "steepest",
    div: float = 10,
    device=None,
    amp: Optional[str] = None,
    skip_start: Optional[int] = None,
    skip_end: Optional[int] = None,
    progress: bool = True,
) -> LRFinderResult:
    """Run an LR range test and suggest ``lr_max`` and ``lr_min``; the model and optimizer come back untouched.

    The LR of every param group goes from ``start_lr`` to ``end_lr`` over ``num_iter`` training batches
    (torch-lr-finder's ``range_test``; it stops early once the smoothed loss exceeds ``diverge_th`` x the best loss).
    ``lr_max`` is picked by ``suggestion`` on the smoothed curve restarted at ``skip_start // 2`` (a rough start does
    not leak into the candidates, see :func:`restart_smoothing`); **the rule for the low end is
    ``lr_min = lr_max / div``** (the S10 recipe's One Cycle starts and ends at ``lr_min`` and peaks at ``lr_max``).

    After the sweep - also when it diverges or raises - the model's parameters, buffers, pending gradients, device and
    train/eval modes, the optimizer's whole state (moments, step counts, param-group LRs), and the python/numpy/torch/
    CUDA RNG states are restored bit for bit (``utils.preserved``), so a later ``fit`` is exactly the run it would have
    been without the sweep.

    Args:
        model, optimizer, criterion: what training will use (a scheduler may already be attached to the optimizer).
        train_loader: a DataLoader or any iterable with ``__len__`` of ``(inputs, targets)`` batches (CPU or already on
            the device); it is restarted if it has fewer than ``num_iter`` batches.
        start_lr, end_lr: the sweep range (0 < start_lr < end_lr).
        num_iter: number of sweep steps (>= skip_start + skip_end + 2; with the default skips, >= 5, and 50 or more
            for a trustworthy curve).
        step_mode: "exp" (evenly spaced in log LR) or "linear".
        smooth_f: exponential smoothing factor of the recorded loss, in [0, 1).
        diverge_th: stop when the smoothed loss exceeds this multiple of the best loss (> 1).
        suggestion: "steepest" (most negative slope of loss vs log10 LR) or "valley" (2/3 down the longest descent);
            both search only from ``skip_start`` up to the minimum of the smoothed loss (never past it, where the loss
            is rising), and warn (RuntimeWarning) when the pick lands on an edge of that range.
        div: ``lr_min = lr_max / div`` (>= 1).
        device: where to run the sweep; None = the model's device. The model is moved back afterwards.
        amp: None (fp32), "bf16", "fp16" (CUDA only, with a GradScaler) or "auto" (bf16/fp16 on CUDA, fp32 on CPU).
        skip_start, skip_end: points ignored at the start/end of the curve when suggesting; None (default) scales
            them with the sweep: 10% and 5% of ``num_iter``, at least 2 and 1 (100 steps: 10 and 5; 50 steps: 5 and 2).
        progress: show torch-lr-finder's progress bar.
    Returns:
        an :class:`LRFinderResult`: ``lr_max``, ``lr_min`` and the curve (``pytorch_utils.viz.plot_lr_finder(result)``
        draws it with the suggestion marked).
    Raises:
        ConfigError: bad arguments, a loader with no ``(inputs, targets)`` batches, or a sweep that diverged before
            recording ``skip_start + skip_end + 2`` finite losses (lower ``start_lr``, or raise ``diverge_th``).
    """
    start_lr, end_lr, num_iter, smooth_f, diverge_th, div, skip_start, skip_end = _validate(
        start_lr, end_lr, num_iter, step_mode, smooth_f, diverge_th, suggestion, div, skip_start, skip_end)
    if next(model.parameters(), None) is None:
        raise ConfigError("the model has no parameters to train")
    try:
        empty = len(train_loader) == 0
    except TypeError:  # iterables without a length (IterableDataset loaders) are allowed
        empty = False
    if empty:
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
    # torch-lr-finder refuses optimizers with a scheduler attached (it looks for "initial_lr"); the key is only
    # scheduler bookkeeping and comes back with the optimizer state (``preserved``).
    for group in optimizer.param_groups:
        group.pop("initial_lr", None)
    amp_kwargs = {}
    if amp_dtype is not None:
        # Loss scaling only matters for fp16; a disabled scaler just calls optimizer.step().
        amp_kwargs = dict(amp_backend="torch", amp_config={"device_type": device.type, "dtype": amp_dtype},
                          grad_scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16))
    # ``preserved`` restores the state; torch-lr-finder's own cache (it always takes one) is simply dropped.
    finder = LRFinder(model, optimizer, criterion, device=device, memory_cache=True, **amp_kwargs)
    batches = train_loader if isinstance(train_loader, TrainDataLoaderIter) else _Batches(train_loader)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_bar(not progress):
        # range_test reads the scheduler's get_lr() directly and prints hints about its own plot(); neither
        # concerns our users (divergence is reported in the result).
        warnings.filterwarnings("ignore", message=r".*get_last_lr\(\)")
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        finder.range_test(batches, **range_kwargs)
    return ([float(v) for v in finder.history["lr"]], [float(v) for v in finder.history["loss"]],
            finder.best_loss)
