"""LR range test (Smith 2017; fastai's ``lr_find``) with torch-lr-finder: an exponential sweep from ``start_lr`` to
``end_lr``, its raw losses smoothed once here, ``lr_max`` suggested and ``lr_min = lr_max / div`` (the S10 One Cycle
range). The plot is ``pytorch_utils.viz.plot_lr_finder`` (train never imports viz)."""
import contextlib
import functools
import io
import logging
from dataclasses import dataclass
from typing import List, Literal, Optional, Sequence
from unittest import mock

import numpy as np
import torch
import torch.nn as nn

from pytorch_utils.errors import ConfigError, bounded, check_fields
from pytorch_utils.utils import amp_dtype_for, model_device, preserved

log = logging.getLogger(__name__)

DIVERGE_TH = 5  # the sweep stops once a loss exceeds 5x the best so far (torch-lr-finder's default)
BETA = 0.95  # the losses' moving average keeps 95 % of its past per step (torch-lr-finder's default smooth_f=0.05)
VALLEY_FRACTION = 2 / 3  # where the valley suggestion sits along the longest descent (0 = its top, 1 = its bottom)


@dataclass
class LRFinderSpec:
    """The LR range test of a recipe: ``num_iter`` batches with the LR rising exponentially from ``start_lr`` to
    ``end_lr``, the rule picking LR_max (``steepest`` descent or fastai's ``valley``) and LR_min = LR_max / ``div``.
    Raises ConfigError for a field of the wrong type or range, or ``start_lr >= end_lr``."""

    start_lr: float = bounded(1e-7, gt=0)
    end_lr: float = bounded(10.0, gt=0)
    num_iter: int = bounded(100, ge=10)  # the first 10 % and last 5 % are skipped: at least 7 candidates remain
    suggestion: Literal["steepest", "valley"] = "steepest"
    div: float = bounded(10.0, ge=1)

    def __post_init__(self):
        check_fields(self, "lr_finder field")
        if self.start_lr >= self.end_lr:
            raise ConfigError(f"lr_finder: start_lr ({self.start_lr}) must be below end_lr ({self.end_lr})")


@dataclass(repr=False)
class LRFinderResult:
    """Outcome of :func:`find_lr`, one point per batch up to the first NaN/inf loss: ``lrs``, ``raw_losses``,
    ``losses`` (smoothed), ``lr_max = lrs[suggestion_index]``, ``lr_min = lr_max / div``, ``diverged`` (the sweep
    stopped before ``end_lr``) and the candidate range searched, ``lrs[skip_start:len(lrs) - skip_end]``."""

    lrs: List[float]
    losses: List[float]
    raw_losses: List[float]
    lr_max: float
    lr_min: float
    suggestion: str
    suggestion_index: int
    diverged: bool
    div: float
    skip_start: int
    skip_end: int

    def __repr__(self) -> str:  # the full curves would flood a notebook cell
        return (f"LRFinderResult(lr_max={self.lr_max:.3g}, lr_min={self.lr_min:.3g} (= lr_max / {self.div:g}), "
                f"suggestion={self.suggestion!r}, suggestion_index={self.suggestion_index}, points={len(self.lrs)}, "
                f"diverged={self.diverged})")


def smooth(raw: Sequence[float], beta: float = BETA) -> List[float]:
    """Exponential moving average with bias correction (fastai's): ``avg = beta avg + (1 - beta) raw[i]``, point
    ``i`` is ``avg / (1 - beta ** (i + 1))``, so the first point is ``raw[0]`` and the start is not pulled to 0."""
    avg, out = 0.0, []
    for i, value in enumerate(raw, 1):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta ** i))
    return out


def suggest(lrs: Sequence[float], losses: Sequence[float], rule: str = "steepest", skip_start: int = 0,
            skip_end: int = 0) -> int:
    """Index of LR_max among the candidates ``skip_start:len - skip_end`` (finite, at least 2), searched up to their
    loss minimum (past it the loss rises). ``steepest``: the most negative d(loss)/d(log10 lr) (central differences);
    ``valley``: 2/3 of the way down the longest strictly decreasing subsequence (after fastai's ``valley``: a noise
    bump does not cut the descent in two). Logs a warning when the pick sits on an edge of the candidates."""
    x = np.log10(np.asarray(lrs[skip_start:len(lrs) - skip_end], dtype=np.float64))
    y = np.asarray(losses[skip_start:len(losses) - skip_end], dtype=np.float64)
    minimum = int(np.argmin(y))  # the first of equal minima
    if rule == "steepest":
        pick = int(np.argmin(np.gradient(y, x)[:minimum + 1]))
    else:
        length, first = np.ones(minimum + 1, dtype=np.int64), np.arange(minimum + 1)  # longest run ending at i
        for i in range(1, minimum + 1):
            higher = np.nonzero(y[:i] > y[i])[0]
            if higher.size:
                j = higher[np.argmax(length[higher])]  # the earliest of the longest: the widest stretch
                length[i], first[i] = length[j] + 1, first[j]
        end = int(np.argmax(length))
        pick = int(first[end]) + round(VALLEY_FRACTION * (end - first[end]))
    hint = None
    if pick == 0:  # also when the loss never fell: the sweep starts too high
        hint = "the first candidate: the loss fell fastest or rose already; lower start_lr or use suggestion='valley'"
    elif pick == minimum:
        hint = "the loss minimum, where training turns unstable; raise end_lr if the loss was still falling there"
    if hint:
        log.warning(f"LR suggestion {rule!r} landed on the edge of its search range (lr {10 ** x[pick]:.3g}): {hint}")
    return skip_start + pick


def _library_output(progress: bool) -> contextlib.ExitStack:
    """torch-lr-finder prints two lines of its own (one names ``{finder_name}``, a placeholder of its README) and has
    no switch for its tqdm bar: its prints are always muted, its bar too when ``progress`` is False."""
    import torch_lr_finder.lr_finder as library

    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    if not progress:
        stack.enter_context(mock.patch.object(library, "tqdm", functools.partial(library.tqdm, disable=True)))
    return stack


def find_lr(model: nn.Module, optimizer: torch.optim.Optimizer, criterion, loader,
            spec: Optional[LRFinderSpec] = None, *, device=None, amp: Optional[str] = None,
            progress: bool = True) -> LRFinderResult:
    """LR range test of ``spec`` (None: the defaults) by torch-lr-finder on the live model and optimizer, which come
    back as they were (weights, buffers, modes, pending gradients, optimizer state, RNG), also when the sweep raises.

    ``loader``: any iterable of ``(inputs, targets, ...)`` batches, restarted when shorter than the sweep; ``device``:
    where to sweep (default: the model's); ``amp``: None, "bf16", "fp16" or "auto"; ``progress``: torch-lr-finder's
    tqdm bar (its printed lines are muted: ``diverged`` in the result says what they said). ConfigError: an empty
    loader, or too few finite losses to suggest an LR (the loss diverged)."""
    from torch_lr_finder import LRFinder, TrainDataLoaderIter  # here: it loads pyplot (~1 s); recipes import the spec

    spec = spec or LRFinderSpec()
    home = model_device(model)
    device = home if device is None else torch.device(device)
    dtype = amp_dtype_for(amp, device)
    amp_kwargs = {} if dtype is None else dict(
        amp_backend="torch", amp_config={"device_type": device.type, "dtype": dtype},
        grad_scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16))
    grads = [p.grad for p in model.parameters()]  # torch-lr-finder sets them to None: the same tensors go back
    attrs = set(vars(optimizer))  # the sweep's torch LR scheduler patches ``step`` onto the optimizer
    try:
        with preserved(model, optimizer), _library_output(progress):
            for group in optimizer.param_groups:  # left by an attached scheduler; torch-lr-finder refuses it
                group.pop("initial_lr", None)
            finder = LRFinder(model, optimizer, criterion, device=device, **amp_kwargs)
            finder.range_test(TrainDataLoaderIter(loader), start_lr=spec.start_lr, end_lr=spec.end_lr,
                              num_iter=spec.num_iter, step_mode="exp", smooth_f=0, diverge_th=DIVERGE_TH)
    except StopIteration:  # torch-lr-finder restarts an exhausted loader once
        raise ConfigError("the training loader is empty: it yielded no batches") from None
    finally:
        model.to(home)
        for p, grad in zip(model.parameters(), grads):
            p.grad = grad
        for name in set(vars(optimizer)) - attrs:
            delattr(optimizer, name)
    raw = np.asarray(finder.history["loss"], dtype=np.float64)
    n = len(raw) if np.isfinite(raw).all() else int(np.argmin(np.isfinite(raw)))  # up to the first NaN/inf
    skip_start, skip_end = max(2, spec.num_iter // 10), max(1, spec.num_iter // 20)
    if n < skip_start + skip_end + 2:
        raise ConfigError(f"the LR sweep recorded only {n} finite losses before diverging (the suggestion needs "
                          f"{skip_start + skip_end + 2}); lower lr_finder start_lr ({spec.start_lr}) or end_lr "
                          f"({spec.end_lr})")
    lrs, losses = [float(v) for v in finder.history["lr"][:n]], smooth(raw[:n].tolist())
    index = suggest(lrs, losses, spec.suggestion, skip_start, skip_end)
    return LRFinderResult(lrs=lrs, losses=losses, raw_losses=raw[:n].tolist(), lr_max=lrs[index],
                          lr_min=lrs[index] / spec.div, suggestion=spec.suggestion, suggestion_index=index,
                          diverged=n < spec.num_iter, div=spec.div, skip_start=skip_start, skip_end=skip_end)
