"""The training engine: ``train_one_epoch``, ``evaluate`` and ``fit``.

Design notes:
- The loader is anything that yields ``(inputs, targets)`` batches: a torch DataLoader (CPU augmentation) or the
  GPU-resident loader of ``pytorch_utils.data.gpu`` (batches already on the device). Inputs are moved with
  ``non_blocking=True``; tensors already on the device are left alone.
- Metrics are summed on the device and read once per ``sync_every`` steps (for the progress bar and the NaN check) and
  once at the end of the epoch, so the hot loop has no per-step ``.item()`` syncs on a GPU.
- Schedulers declare how they are stepped: "batch" (One Cycle, cyclic), "epoch", or "plateau" (ReduceLROnPlateau,
  stepped with the test loss). ``fit`` holds everything in a :class:`TrainState` that callbacks (checkpoints, early
  stopping, phase schedules) read and change between epochs.
"""
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from pytorch_utils.data.loaders import set_loader_epoch
from pytorch_utils.errors import ConfigError, NonFiniteLossError
from pytorch_utils.train import distributed as dist_utils
from pytorch_utils.utils import amp_dtype_for, eval_mode, model_device, resolve_device

SCHEDULER_INTERVALS = ("batch", "epoch", "plateau")


def scheduler_interval(scheduler) -> str:
    """Guess how ``scheduler`` is stepped: "batch" for per-iteration schedules, "plateau", else "epoch"."""
    if scheduler is None:
        return "epoch"
    declared = getattr(scheduler, "interval", None)
    if declared in SCHEDULER_INTERVALS:
        return declared
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "plateau"
    if isinstance(scheduler, (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)):
        return "batch"
    return "epoch"


def _to_device(t: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    if t.device != device:
        t = t.to(device, non_blocking=True)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def _input_dtype(model: nn.Module, amp_dtype: Optional[torch.dtype]) -> Optional[torch.dtype]:
    """The dtype float inputs must have outside autocast: the model's own (None under autocast, which casts).

    The GPU loader may hand out bf16 batches (half the traffic under bf16 autocast); a caller evaluating such a
    loader without autocast (a notebook's ``evaluate(model, loader)``) would otherwise feed bf16 into fp32 weights.
    """
    if amp_dtype is not None:
        return None
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else None


def _cast_inputs(inputs: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    if dtype is not None and inputs.is_floating_point() and inputs.dtype != dtype:
        return inputs.to(dtype)
    return inputs


def _progress_bar(loader, desc: str, enabled: bool):
    """A tqdm bar driven by hand: ``tqdm.auto`` called with an iterable calls ``iter()`` on it once more, which for a
    DataLoader with workers would start (and throw away) a second set of worker processes every epoch."""
    try:
        total = len(loader)
    except TypeError:
        total = None
    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """Learning rate of the optimizer's first parameter group."""
    return float(optimizer.param_groups[0]["lr"])


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    criterion: Callable,
    *,
    device=None,
    scheduler=None,
    interval: Optional[str] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    amp_dtype: Optional[torch.dtype] = None,
    mixer: Optional[Callable] = None,
    channels_last: bool = False,
    grad_clip: Optional[float] = None,
    ema=None,
    progress: bool = True,
    desc: str = "train",
    sync_every: int = 50,
    epoch: Optional[int] = None,
    global_step: int = 0,
    bn_warmup: int = 0,
) -> Dict[str, float]:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model, loader, optimizer, criterion: the usual; ``criterion(logits, targets)`` must accept the targets the
            ``mixer`` produces (soft targets need a soft-target loss, see ``pytorch_utils.train.mixing``).
        device: where to compute; default: the model's device.
        scheduler, interval: the scheduler is stepped after every batch only when ``interval == "batch"``
            (default: guessed with :func:`scheduler_interval`); per-epoch stepping is ``fit``'s job.
        scaler: a GradScaler for fp16 autocast; amp_dtype: autocast dtype or None for fp32.
        mixer: optional ``(inputs, targets) -> (inputs, targets)`` batch transform (MixUp/CutMix).
        channels_last: convert inputs to channels_last (the model should be converted too).
        grad_clip: clip the global grad norm to this value.
        ema: optional object with ``update(model)`` called after each optimizer step.
        progress: show a tqdm bar; sync_every: read metrics (bar, NaN check) every this many steps.
        epoch: the epoch number, used in error messages.
        global_step, bn_warmup: optimizer steps taken before this epoch, and for how many first steps of the run
            BatchNorm running statistics are a plain average of the batches seen (momentum ``max(m, 1 / (n + 1))``)
            instead of starting from mean 0 / variance 1: a run of a handful of batches then evaluates with real
            statistics, and a long run is unchanged after those steps. Not applied to compiled models (changing
            the momentum would recompile them).
    Returns:
        ``{"loss", "acc", "lr", "steps", "samples", "seconds"}`` (acc in percent; lr at the end of the epoch).
    Raises:
        NonFiniteLossError: the loss became NaN/inf (names the epoch and step); the optimizer step for that batch has
            already been taken only when no sync point caught it sooner, so callers should restore a checkpoint.
    """
    device = torch.device(device) if device is not None else model_device(model)
    interval = interval or scheduler_interval(scheduler)
    model.train()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    bad_step = torch.full((), -1, device=device, dtype=torch.long)
    in_dtype = _input_dtype(model, amp_dtype)
    warm_bn = _BatchNormWarmup(model, bn_warmup, global_step)
    bar = _progress_bar(loader, desc, progress)
    with warm_bn:
        steps = 0
        for step, (inputs, targets) in enumerate(loader):
            warm_bn.before(step)
            inputs = _cast_inputs(_to_device(inputs, device, channels_last), in_dtype)
            targets = _to_device(targets, device)
            if step == 0:
                _check_labels(targets, model_output_classes(model), desc)
            if mixer is not None:
                inputs, targets = mixer(inputs, targets)
            with _autocast(device, amp_dtype):
                logits = model(inputs)
                loss = criterion(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
            if ema is not None:
                ema.update(model)
            if scheduler is not None and interval == "batch":
                scheduler.step()

            n = targets.shape[0]
            detached = loss.detach()
            # Remember the first non-finite step without a host sync; checked at the sync points below.
            finite = torch.isfinite(detached)
            bad_step = torch.where((bad_step < 0) & ~finite, torch.full_like(bad_step, step), bad_step)
            loss_sum += detached.double() * n
            hard = targets.argmax(dim=1) if targets.dim() == 2 else targets
            correct += (logits.detach().argmax(dim=1) == hard).sum()
            count += n
            steps += 1
            bar.update(1)
            if (step + 1) % sync_every == 0:
                _check_finite(bad_step, epoch, desc)
                if progress:
                    bar.set_postfix(loss=f"{(loss_sum / count).item():.4f}", acc=f"{(100 * correct / count).item():.2f}",
                                    lr=f"{current_lr(optimizer):.2e}")
    bar.close()
    _check_finite(bad_step, epoch, desc)
    totals = dist_utils.all_reduce_sum(torch.stack([loss_sum, correct, count]))
    loss_sum, correct, count = totals.tolist()
    if count == 0:
        raise ConfigError("the training loader produced no batches (dataset smaller than one batch with drop_last?)")
    return {
        "loss": loss_sum / count,
        "acc": 100.0 * correct / count,
        "lr": current_lr(optimizer),
        "steps": steps,
        "samples": int(count),
        "seconds": time.perf_counter() - start,
    }


class _BatchNormWarmup:
    """Sets BatchNorm momentum to ``max(m, 1 / (n + 1))`` for the first ``steps`` optimizer steps of a run."""

    def __init__(self, model: nn.Module, steps: int, global_step: int):
        compiled = hasattr(model, "_orig_mod")
        active = steps > 0 and global_step < steps and not compiled
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       and m.track_running_stats and m.momentum is not None] if active else []
        self.momenta = [m.momentum for m in self.layers]
        self.steps, self.global_step = steps, global_step

    def before(self, step: int) -> None:
        """Call before the forward pass of step ``step`` of this epoch."""
        if not self.layers:
            return
        n = self.global_step + step
        if n >= self.steps:  # warm-up over: give the momenta back once, then nothing more per step
            self.restore()
            self.layers = []
            return
        for m, base in zip(self.layers, self.momenta):
            m.momentum = max(base, 1.0 / (n + 1))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:  # the model leaves with its own momenta, also after an error
        self.restore()

    def restore(self) -> None:
        """Give every BatchNorm layer its own momentum back."""
        for m, base in zip(self.layers, self.momenta):
            m.momentum = base


def model_output_classes(model: nn.Module) -> Optional[int]:
    """Width of the model's last Linear layer (its number of classes), or None when it has none."""
    head = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            head = m
    return head.out_features if head is not None else None


def _check_labels(targets: torch.Tensor, num_classes: Optional[int], desc: str) -> None:
    """Once per epoch (one host sync): labels must index the model's outputs."""
    if num_classes is None or targets.dim() != 1 or targets.numel() == 0:
        return
    lo, hi = torch.stack([targets.min(), targets.max()]).tolist()  # one host sync
    if lo < 0 or hi >= num_classes:
        raise ConfigError(f"{desc}: labels range over [{lo}, {hi}] but the model outputs {num_classes} classes; build "
                          f"the model with num_classes={hi + 1} or more, or fix the labels")


def _check_finite(bad_step: torch.Tensor, epoch: Optional[int], desc: str) -> None:
    step = int(bad_step.item())
    if step >= 0:
        where = f"epoch {epoch}, " if epoch is not None else ""
        raise NonFiniteLossError(
            f"{desc} loss became NaN/inf at {where}step {step}; training stopped. Lower the learning rate, check the "
            "inputs for NaNs, or use amp=None; the last good checkpoint (if any) is untouched."
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    criterion: Optional[Callable] = None,
    device=None,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    tta: Union[str, Callable, None] = None,
    return_outputs: bool = False,
    return_inputs: bool = False,
    progress: bool = False,
    desc: str = "test",
) -> Dict[str, Any]:
    """Evaluate ``model`` on ``loader`` in eval mode under no_grad, then restore the model's previous mode.

    Args:
        criterion: loss on hard targets; default cross-entropy (mean over the batch).
        tta: None, "flip", "flip_translate" or a callable ``(model, inputs) -> logits`` (test-time augmentation).
        return_outputs: also return ``logits`` (N, C), ``probs``, ``preds`` and ``targets`` as CPU tensors, for plots.
        return_inputs: also return the (normalized) ``inputs`` as a CPU tensor; only for small sets (memory).
    Returns:
        ``{"loss", "acc", "samples", "seconds"}`` (+ the tensors requested).
    """
    from pytorch_utils.train.tta import get_tta  # local: tta imports this module's helpers

    device = torch.device(device) if device is not None else model_device(model)
    criterion = criterion or nn.CrossEntropyLoss()
    tta_fn = get_tta(tta)
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    keep_logits, keep_targets, keep_inputs = [], [], []
    in_dtype = _input_dtype(model, amp_dtype)
    with eval_mode(model):
        bar = _progress_bar(loader, desc, progress)
        for inputs, targets in loader:
            bar.update(1)
            inputs = _cast_inputs(_to_device(inputs, device, channels_last), in_dtype)
            targets = _to_device(targets, device)
            with _autocast(device, amp_dtype):
                logits = tta_fn(model, inputs) if tta_fn is not None else model(inputs)
            logits = logits.float()
            n = targets.shape[0]
            loss_sum += criterion(logits, targets).double() * n
            correct += (logits.argmax(dim=1) == targets).sum()
            count += n
            if return_outputs:
                keep_logits.append(logits.cpu())
                keep_targets.append(targets.cpu())
            if return_inputs:
                keep_inputs.append(inputs.float().cpu())
    bar.close()
    totals = dist_utils.all_reduce_sum(torch.stack([loss_sum, correct, count]))
    loss_sum, correct, count = totals.tolist()
    if count == 0:
        raise ConfigError("the evaluation loader produced no batches")
    result: Dict[str, Any] = {
        "loss": loss_sum / count,
        "acc": 100.0 * correct / count,
        "samples": int(count),
        "seconds": time.perf_counter() - start,
    }
    if return_outputs:
        logits = torch.cat(keep_logits)
        result.update(logits=logits, probs=F.softmax(logits, dim=1), preds=logits.argmax(dim=1),
                      targets=torch.cat(keep_targets))
    if return_inputs:
        result["inputs"] = torch.cat(keep_inputs)
    return result


class History(list):
    """Per-epoch records (dicts) of a run; a list with a few conveniences."""

    def column(self, key: str) -> List[Any]:
        """Values of ``key`` over the epochs (None where an epoch lacks it)."""
        return [rec.get(key) for rec in self]

    def best(self, key: str = "test_acc", mode: str = "max") -> Optional[Dict[str, Any]]:
        """The record with the best ``key`` (``mode`` "max" or "min"), or None when no record has it."""
        recs = [r for r in self if r.get(key) is not None]
        if not recs:
            return None
        return (max if mode == "max" else min)(recs, key=lambda r: r[key])

    def save_json(self, path) -> None:
        """Write the history as JSON (atomically)."""
        import json
        from pytorch_utils.io import atomic_write_text

        atomic_write_text(path, json.dumps(list(self), indent=2))


@dataclass
class TrainState:
    """Everything a run holds between epochs; callbacks read and change it.

    ``epoch`` counts completed epochs (0 before the first). Setting ``stop`` ends the run after the current epoch.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable
    train_loader: Any
    test_loader: Any
    device: torch.device
    epochs: int
    scheduler: Any = None
    interval: str = "epoch"
    scaler: Optional[torch.amp.GradScaler] = None
    amp_dtype: Optional[torch.dtype] = None
    mixer: Optional[Callable] = None
    eval_criterion: Optional[Callable] = None
    channels_last: bool = False
    tta: Any = None
    ema: Any = None
    bn_warmup: int = 10  # first steps of the run with averaged BatchNorm statistics (see train_one_epoch)
    epoch: int = 0
    history: History = field(default_factory=History)
    stop: bool = False
    stop_reason: Optional[str] = None
    # Scheduler state read from a checkpoint before the scheduler object exists (phase schedules build it late).
    pending_scheduler_state: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)


class Callback:
    """Hooks ``fit`` calls; override what you need. Each receives the :class:`TrainState`."""

    def on_fit_start(self, state: TrainState) -> None:
        """Once before the first epoch (after a resume has set ``state.epoch``)."""

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


def step_epoch_scheduler(state: TrainState, record: Dict[str, Any]) -> None:
    """Step a per-epoch or plateau scheduler at the end of an epoch."""
    if state.scheduler is None or state.interval == "batch":
        return
    if state.interval == "plateau":
        metric = record.get("test_loss", record.get("train_loss"))
        state.scheduler.step(metric)
    else:
        state.scheduler.step()


def fit(
    model: nn.Module,
    train_loader,
    test_loader=None,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    criterion: Optional[Callable] = None,
    eval_criterion: Optional[Callable] = None,
    scheduler=None,
    interval: Optional[str] = None,
    device=None,
    amp: Optional[str] = None,
    channels_last: bool = False,
    mixer: Optional[Callable] = None,
    grad_clip: Optional[float] = None,
    ema=None,
    tta=None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    sync_every: int = 50,
    cudnn_benchmark: bool = True,
    bn_warmup: int = 10,
    log: Optional[Callable[[str], None]] = print,
) -> History:
    """Train ``model`` for ``epochs`` epochs, evaluating after each, and return the history.

    Args:
        model: moved to ``device`` (and channels_last when asked) here; nothing else moves it.
        train_loader, test_loader: batch iterables (DataLoader or GPU loader); test_loader may be None.
        epochs: total epochs of the run (a resumed run continues up to the same total).
        optimizer, criterion: criterion defaults to cross-entropy; eval_criterion (hard targets) too.
        scheduler, interval: see :func:`scheduler_interval`; plateau schedulers get the test loss.
        device: None trains where the model is; a name ("cuda", "auto") moves the model there. amp: None, "auto", "bf16", "fp16" (fp16 adds a GradScaler).
        mixer: MixUp/CutMix batch transform for training; ema: weight EMA with ``update``/``apply_to``.
        tta: test-time augmentation used for evaluation (see ``evaluate``).
        callbacks: :class:`Callback` objects (checkpoints, early stopping, phases...), called in order.
        progress: tqdm bars; sync_every: steps between host reads of the metrics (progress bar, NaN check).
        cudnn_benchmark: on CUDA, let cuDNN autotune its kernels (input sizes are fixed within a phase); this sets
            the global ``torch.backends.cudnn.benchmark`` flag and leaves it on.
        log: where the one-line epoch summaries go (None for silence).
        bn_warmup: for this many first steps BatchNorm running statistics average the batches seen instead of
            decaying from mean 0 / var 1, so a smoke run of a few batches (batch 512 on 2,000 images) evaluates
            sensibly; 0 keeps PyTorch's plain momentum throughout. Longer runs are unaffected after those steps.
    Returns:
        the :class:`History`: one dict per epoch with epoch, train_loss, train_acc, test_loss, test_acc, lr,
        seconds (+ whatever callbacks add, e.g. phase, checkpoint, early-stop flags).
    """
    # The device follows the model unless one is named (then the model is moved there).
    device = model_device(model) if device is None else resolve_device(device)
    if device.type == "cuda" and cudnn_benchmark and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if channels_last:
        model = model.to(device, memory_format=torch.channels_last)
    else:
        model = model.to(device)
    amp_dtype = amp_dtype_for(amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    state = TrainState(
        model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(),
        train_loader=train_loader, test_loader=test_loader, device=device, epochs=epochs,
        scheduler=scheduler, interval=interval or scheduler_interval(scheduler), scaler=scaler,
        amp_dtype=amp_dtype, mixer=mixer, eval_criterion=eval_criterion or nn.CrossEntropyLoss(),
        channels_last=channels_last, tta=tta, ema=ema, bn_warmup=bn_warmup,
    )
    if state.interval not in SCHEDULER_INTERVALS:
        raise ConfigError(f"interval must be one of {SCHEDULER_INTERVALS}, got {state.interval!r}")
    run_fit(state, callbacks=callbacks, grad_clip=grad_clip, progress=progress, log=log, sync_every=sync_every)
    return state.history


def run_fit(state: TrainState, *, callbacks: Sequence[Callback] = (), grad_clip=None, progress=True,
            log: Optional[Callable[[str], None]] = print, sync_every: int = 50) -> TrainState:
    """Run the epoch loop on a prepared :class:`TrainState` (what ``fit`` does after building it)."""
    log = log if (log is not None and dist_utils.is_main_process()) else None
    for cb in callbacks:
        cb.on_fit_start(state)
    load_pending_scheduler_state(state)
    try:
        while state.epoch < state.epochs and not state.stop:
            for cb in callbacks:
                cb.on_epoch_start(state)
            epoch = state.epoch + 1  # 1-based for people
            set_loader_epoch(state.train_loader, state.epoch)
            train = train_one_epoch(
                state.model, state.train_loader, state.optimizer, state.criterion, device=state.device,
                scheduler=state.scheduler, interval=state.interval, scaler=state.scaler, amp_dtype=state.amp_dtype,
                mixer=state.mixer, channels_last=state.channels_last, grad_clip=grad_clip, ema=state.ema,
                progress=progress, desc=f"epoch {epoch}/{state.epochs}", epoch=epoch, sync_every=sync_every,
                global_step=state.epoch * _num_batches(state.train_loader), bn_warmup=state.bn_warmup,
            )
            record: Dict[str, Any] = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                                      "lr": train["lr"]}
            if state.test_loader is not None:
                eval_model = state.ema.module if state.ema is not None else state.model
                test = evaluate(eval_model, state.test_loader, criterion=state.eval_criterion, device=state.device,
                                amp_dtype=state.amp_dtype, channels_last=state.channels_last, tta=state.tta)
                record.update(test_loss=test["loss"], test_acc=test["acc"], test_samples=test["samples"])
            step_epoch_scheduler(state, record)
            record["train_seconds"] = train["seconds"]
            record["seconds"] = train["seconds"] + (test["seconds"] if state.test_loader is not None else 0.0)
            state.epoch = epoch
            state.history.append(record)
            for cb in callbacks:
                cb.on_epoch_end(state, record)
            for cb in callbacks:
                cb.on_epoch_complete(state, record)
            if log is not None:
                log(format_record(record))
    except BaseException as exc:
        for cb in callbacks:
            cb.on_exception(state, exc)
        raise
    for cb in callbacks:
        cb.on_fit_end(state)
    return state


def _num_batches(loader) -> int:
    try:
        return len(loader)
    except TypeError:  # an iterable without a length: treat every epoch as past the warm-up
        return 10**9


def load_pending_scheduler_state(state: TrainState) -> None:
    """Load a resumed scheduler state into ``state.scheduler`` once it exists, keeping the optimizer's saved LRs.

    Building a scheduler sets the optimizer's LR to the schedule's start, and several torch schedulers compute the
    next LR from the current one, so the LRs the checkpoint saved are put back after the scheduler state is loaded.
    """
    if state.pending_scheduler_state is None or state.scheduler is None:
        return
    state.scheduler.load_state_dict(state.pending_scheduler_state)
    state.pending_scheduler_state = None
    saved = state.extra.pop("resumed_param_groups", None)
    if saved:
        for group, values in zip(state.optimizer.param_groups, saved):
            group.update(values)


def format_record(record: Dict[str, Any]) -> str:
    """One readable line for an epoch record."""
    parts = [f"epoch {record['epoch']:>3}"]
    for key, fmt in (("train_loss", "{:.4f}"), ("train_acc", "{:.2f}%"), ("test_loss", "{:.4f}"),
                     ("test_acc", "{:.2f}%"), ("lr", "{:.3e}"), ("seconds", "{:.1f}s")):
        value = record.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key} " + fmt.format(value))
    for key in ("phase", "note"):
        if record.get(key) is not None:
            parts.append(f"{key} {record[key]}")
    return " | ".join(parts)
