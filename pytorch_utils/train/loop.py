"""The training engine: ``train_one_epoch``, ``evaluate`` and ``fit`` (in the style of torchvision's references).

One backward path for fp32/bf16/fp16 (a GradScaler enabled only for fp16, as nanoGPT); the LR is ``schedule(step)``
of the optimizer steps applied; metrics stay on the device, read every ``sync_every`` steps (no per-step sync).
"""
import contextlib
import logging
import math
import time
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm.auto import tqdm

from pytorch_utils.data.loaders import set_loader_epoch
from pytorch_utils.errors import ConfigError, NonFiniteLossError
from pytorch_utils.train import distributed as dist_utils
from pytorch_utils.train.checkpoints import restore_state
from pytorch_utils.train.schedules import as_schedule, check_length
from pytorch_utils.train.state import Callback, History, TrainConfig, TrainState
from pytorch_utils.utils import amp_dtype_for, model_device, preserved, resolve_device

log = logging.getLogger(__name__)
ADVICE = "Lower the learning rate, check the inputs for NaNs, or use amp=None; checkpoints saved before are untouched."


def _num_batches(loader, default: Optional[int] = 10**9) -> Optional[int]:
    try:
        return len(loader)
    except TypeError:  # an iterable without a length
        return default


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


class _Meter:
    """The batch pass shared by training and evaluation: batches moved to the device, loss / accuracy / count sums
    kept there (read once at the end), and flags read at the sync points: the first step with a non-finite loss, the
    range of the hard labels."""

    def __init__(self, model: nn.Module, device: torch.device, amp_dtype, channels_last: bool):
        p = next((p for p in model.parameters() if p.is_floating_point()), None)
        self.dtype = p.dtype if p is not None and amp_dtype is None else None  # what float inputs are cast to
        self.device, self.channels_last, self.num_classes = device, channels_last, model_output_classes(model)
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss * n, correct, n
        self.bad_step = torch.full((), -1, device=device, dtype=torch.long)
        self.extremes = torch.full((2,), -2**62, device=device, dtype=torch.long)  # -lowest, highest hard label

    def batches(self, loader, desc: str, progress: bool):
        """``(index, inputs, targets)`` per batch, on the device. Outside autocast, float inputs take the model's dtype
        (the GPU loader may hand out bf16 batches, which a plain fp32 ``evaluate(model, loader)`` must still accept).
        Hard labels outside 0..C-1 are clamped into it, so the loss never sees them (torch's own check is a device
        assert on a GPU); their range is kept for :meth:`check`. Soft (N, C) targets pass as they are. The tqdm bar
        is driven by hand: ``tqdm.auto`` over an iterable calls ``iter()`` once more, which for a DataLoader with
        workers would start (and throw away) a second set of worker processes every epoch."""
        self.bar = tqdm(total=_num_batches(loader, None), desc=desc, leave=False, disable=not progress,
                        dynamic_ncols=True)
        for i, (inputs, targets) in enumerate(loader):
            inputs = inputs.to(self.device, non_blocking=True)
            if self.channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            if self.dtype is not None and inputs.is_floating_point():
                inputs = inputs.to(self.dtype)
            targets = targets.to(self.device, non_blocking=True)
            if self.num_classes is not None and targets.dim() == 1 and targets.numel() > 0:
                self.extremes = torch.maximum(self.extremes, torch.stack([-targets.min().long(), targets.max().long()]))
                targets = targets.clamp(0, self.num_classes - 1)
            yield i, inputs, targets
            self.bar.update(1)
        self.bar.close()

    def check(self, epoch: Optional[int], what: str = "train") -> None:
        """The one host read of the flags: ConfigError for labels outside the classes, NonFiniteLossError for a
        non-finite loss (at the sync points; none per step)."""
        step, minus_low, high = torch.cat([self.bad_step.view(1), self.extremes]).tolist()
        low, n, where = -minus_low, self.num_classes, f"epoch {epoch}, " if epoch is not None else ""
        if n is not None and (low < 0 or high >= n):
            fix = f"build the model with num_classes={high + 1} or more, or fix the labels" if high >= n else \
                "fix the labels (class indices start at 0)"
            raise ConfigError(f"{what} labels range over [{low}, {high}] ({where}the model has {n} classes: "
                              f"0..{n - 1}); {fix}")
        if step >= 0:
            raise NonFiniteLossError(f"train loss became NaN/inf at {where}step {step}; training stopped. {ADVICE}")

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, step: Optional[int] = None) -> None:
        """Add one batch: ``loss`` is the batch mean; soft (N, C) targets count their argmax as the label. With a
        training ``step``, the first one with a non-finite loss is remembered without a host sync."""
        n = targets.shape[0]
        hard = targets.argmax(dim=1) if targets.dim() == 2 else targets
        self.sums[0] += loss.detach().double() * n
        self.sums[1] += (logits.detach().argmax(dim=1) == hard).sum()
        self.sums[2] += n
        if step is not None:
            self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(loss.detach()),
                                        torch.full_like(self.bad_step, step), self.bad_step)

    def result(self, epoch: Optional[int], what: str) -> Dict[str, float]:
        """:meth:`check`, then the sums (over all ranks) as ``{"loss", "acc" (percent), "samples"}``."""
        self.check(epoch, what)
        loss_sum, correct, count = dist_utils.all_reduce_sum(self.sums).tolist()
        if count == 0:
            raise ConfigError(f"the {dict(train='training', test='evaluation')[what]} loader produced no batches "
                              "(dataset smaller than one batch with drop_last?)")
        return {"loss": loss_sum / count, "acc": 100.0 * correct / count, "samples": int(count)}


def model_output_classes(model: nn.Module) -> Optional[int]:
    """Width of the model's last Linear layer (its number of classes), or None when it has none."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return heads[-1].out_features if heads else None


def _check_diverged(model: nn.Module, test_loss: float, epoch: int) -> None:
    """NonFiniteLossError when the test loss or a weight is NaN/inf (one host read per epoch, before any save)."""
    finite = torch.stack([t.isfinite().all() for t in model.state_dict().values() if t.is_floating_point()]).all()
    if not (math.isfinite(test_loss) and finite):
        what = "a weight" if math.isfinite(test_loss) else f"the test loss ({test_loss:g})"
        raise NonFiniteLossError(f"{what} became NaN/inf in epoch {epoch}; stopped before saving it. " + ADVICE)


def _optimizer_step(model: nn.Module, optimizer, scaler, grad_clip: Optional[float], schedule, step: int) -> bool:
    """One optimizer step through the GradScaler (a pass-through when disabled), with the LR (and momentum, when it
    cycles) ``schedule`` gives applied step ``step``; False when the scaler skipped the step because of inf/NaN
    gradients (fp16), so the schedule does not advance."""
    if schedule is not None:
        schedule.apply(optimizer, step)
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scale = scaler.get_scale()  # 1.0 without a sync when the scaler is disabled
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return not scaler.is_enabled() or scaler.get_scale() >= scale  # a skipped step lowers the scale


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, criterion: Callable,
                    config: Optional[TrainConfig] = None, *, schedule=None, scaler=None, step: int = 0,
                    epoch: Optional[int] = None) -> Dict[str, float]:
    """Train ``model`` (on its device) for one pass over ``loader`` with the settings of ``config``.

    ``criterion(logits, targets)`` must accept the targets ``config.mixer`` produces. ``schedule``: anything with
    ``apply(optimizer, step)`` (a StepSchedule, a TorchSchedule), called before each optimizer step with ``step`` +
    the steps applied so far, or None. ``scaler``: default one enabled only for fp16. ``epoch``: 1-based, for the bar
    and error messages. Returns ``{"loss", "acc" (percent), "lr" (last step), "steps" (applied), "samples",
    "seconds"}``. Raises NonFiniteLossError when the loss becomes NaN/inf (names the epoch and batch), ConfigError
    for labels outside the model's classes.
    """
    cfg = config or TrainConfig()
    device = model_device(model)
    amp_dtype = amp_dtype_for(cfg.amp, device)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    n_acc, num_batches = cfg.accumulate_steps, _num_batches(loader)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    meter, start, applied = _Meter(model, device, amp_dtype, cfg.channels_last), time.perf_counter(), 0
    for i, inputs, targets in meter.batches(loader, f"epoch {epoch}" if epoch else "train", cfg.progress):
        if cfg.mixer is not None:
            inputs, targets = cfg.mixer(inputs, targets)
        boundary = (i + 1) % n_acc == 0 or i + 1 == num_batches
        # DDP: gradients are all-reduced only on the batch that ends an accumulation group.
        sync = model.no_sync() if not boundary and hasattr(model, "no_sync") else contextlib.nullcontext()
        with sync:
            with _autocast(device, amp_dtype):
                logits = model(inputs)
                loss = criterion(logits.float(), targets)
            scaler.scale(loss / n_acc).backward()
        meter.add(loss, logits, targets, step=i)
        if boundary and _optimizer_step(model, optimizer, scaler, cfg.grad_clip, schedule, step + applied):
            applied += 1
            if cfg.ema is not None:
                cfg.ema.update(model)
        if (i + 1) % cfg.sync_every == 0:
            meter.check(epoch)
            meter.bar.set_postfix(loss=f"{(meter.sums[0] / meter.sums[2]).item():.4f}",
                                  lr=f"{current_lr(optimizer):.2e}")
    return {**meter.result(epoch, "train"), "lr": current_lr(optimizer), "steps": applied,
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, criterion: Optional[Callable] = None, device=None, amp: Optional[str] = None,
             channels_last: bool = False, tta=None, return_outputs: bool = False, return_inputs: bool = False,
             progress: bool = False) -> Dict[str, Any]:
    """Evaluate ``model`` on ``loader`` in eval mode under no_grad; every module's mode is restored afterwards.

    ``criterion``: loss on hard targets (default cross-entropy); ``device``: default the model's; ``amp``: as in
    ``fit``; ``tta``: None, "flip", "flip_translate" or ``(model, inputs) -> logits``.
    Returns ``{"loss", "acc" (percent), "samples", "seconds"}``, plus CPU tensors ``logits`` (N, C), ``probs``,
    ``preds``, ``targets`` with ``return_outputs`` and the normalized ``inputs`` with ``return_inputs`` (small sets).
    Raises ConfigError for hard labels outside the model's classes.
    """
    from pytorch_utils.train.tta import get_tta  # tta imports nothing from here; kept local to stay import-light

    device = torch.device(device) if device is not None else model_device(model)
    criterion, tta_fn, amp_dtype = criterion or nn.CrossEntropyLoss(), get_tta(tta), amp_dtype_for(amp, device)
    start, kept = time.perf_counter(), {"logits": [], "targets": [], "inputs": []}
    meter = _Meter(model, device, amp_dtype, channels_last)
    with preserved(model, weights=False, rng=False, train=False):
        for _, inputs, targets in meter.batches(loader, "test", progress):
            with _autocast(device, amp_dtype):
                logits = (tta_fn(model, inputs) if tta_fn is not None else model(inputs)).float()
            meter.add(criterion(logits, targets), logits, targets)
            if return_outputs:
                kept["logits"].append(logits.cpu())
                kept["targets"].append(targets.cpu())
            if return_inputs:
                kept["inputs"].append(inputs.float().cpu())
    result: Dict[str, Any] = {**meter.result(None, "test"), "seconds": time.perf_counter() - start}
    if return_outputs:
        logits = torch.cat(kept["logits"])
        result.update(logits=logits, probs=F.softmax(logits, dim=1), preds=logits.argmax(dim=1),
                      targets=torch.cat(kept["targets"]))
    if return_inputs:
        result["inputs"] = torch.cat(kept["inputs"])
    return result


def fit(model: nn.Module, train_loader, test_loader=None, *, epochs: int, optimizer: torch.optim.Optimizer,
        criterion: Optional[Callable] = None, scheduler=None, callbacks: Sequence[Callback] = (),
        resume: Optional[Dict[str, Any]] = None, config: Optional[TrainConfig] = None) -> History:
    """Train ``model`` (moved to ``config.device``) for ``epochs`` epochs in all, evaluating after each if a
    ``test_loader`` is given, with the settings of ``config`` (a :class:`TrainConfig`).

    ``scheduler``: a :class:`ScheduleSpec` (built here for this run's length), a schedule from ``build_schedule``, a
    torch scheduler (OneCycleLR/CyclicLR stepped per optimizer step, others per epoch, ReduceLROnPlateau with the
    test loss), or None (a PhaseSchedule callback may supply one). ``resume``: a checkpoint dict (``load_checkpoint``)
    restored before any hook runs; when the steps per epoch changed since it was written (batch or data size), the
    schedule continues from the same fraction of the run. Returns the :class:`History`, one record per epoch (also
    logged at INFO on rank 0). Raises ConfigError (``epochs < 1``, a scheduler with a loader that has no length, a
    schedule built for fewer steps than the run, labels outside the model's classes), CheckpointError (a checkpoint
    that does not fit) or NonFiniteLossError (a NaN/inf train or test loss or weight: that epoch is never saved).
    """
    cfg = config or TrainConfig()
    if epochs < 1 or (scheduler is not None and _num_batches(train_loader, None) is None):
        raise ConfigError(f"epochs must be >= 1, got {epochs}" if epochs < 1 else "a scheduler needs a training "
                          "loader with a length (len(loader)): the schedule is laid over the run's optimizer steps")
    device = model_device(model) if cfg.device is None else resolve_device(cfg.device)
    if device.type == "cuda" and cfg.cudnn_benchmark and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True
    model = model.to(device, memory_format=torch.channels_last) if cfg.channels_last else model.to(device)
    amp_dtype = amp_dtype_for(cfg.amp, device)
    for group in optimizer.param_groups:  # the base LR of schedules without their own ``lr`` (as torch records it)
        group.setdefault("initial_lr", group["lr"])
    steps_per_epoch = math.ceil(_num_batches(train_loader) / cfg.accumulate_steps)
    state = TrainState(
        model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(), train_loader=train_loader,
        test_loader=test_loader, device=device, epochs=epochs, config=cfg,
        scheduler=as_schedule(scheduler, optimizer, steps_per_epoch, epochs),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), steps_per_epoch=steps_per_epoch)
    if resume is not None:
        restore_state(state, resume, source=resume.get("_path", "checkpoint"))
        if dist_utils.is_main_process():
            log.info(f"resumed from {resume.get('_path', 'a checkpoint')} (epoch {state.epoch}/{epochs})")
    run_fit(state, callbacks)
    return state.history


def _hook(callbacks: Sequence[Callback], name: str, *args) -> None:
    for cb in callbacks:
        getattr(cb, name)(*args)


def run_fit(state: TrainState, callbacks: Sequence[Callback] = ()) -> TrainState:
    """Run the epoch loop on a prepared (and, when resuming, restored) :class:`TrainState`."""
    _hook(callbacks, "on_fit_start", state)
    check_length(state.scheduler, state.steps_per_epoch * state.epochs)
    try:
        while state.epoch < state.epochs and not state.stop:
            _hook(callbacks, "on_epoch_start", state)
            record = _run_epoch(state)
            _hook(callbacks, "on_epoch_end", state, record)
            _hook(callbacks, "on_epoch_complete", state, record)
            if dist_utils.is_main_process():
                log.info(format_record(record))
    except BaseException as exc:
        _hook(callbacks, "on_exception", state, exc)
        raise
    _hook(callbacks, "on_fit_end", state)
    return state


def _run_epoch(state: TrainState) -> Dict[str, Any]:
    """Train one epoch, evaluate, step a plateau scheduler; appends and returns the epoch's record."""
    cfg, epoch = state.config, state.epoch + 1  # 1-based for people
    set_loader_epoch(state.train_loader, state.epoch)
    plateau = isinstance(state.scheduler, ReduceLROnPlateau)
    train = train_one_epoch(state.model, state.train_loader, state.optimizer, state.criterion, cfg,
                            schedule=None if plateau else state.scheduler, scaler=state.scaler, step=state.step,
                            epoch=epoch)
    state.step += train["steps"]
    record: Dict[str, Any] = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                              "lr": train["lr"], "train_seconds": train["seconds"], "seconds": train["seconds"]}
    if state.test_loader is not None:
        test = evaluate(cfg.ema.module if cfg.ema is not None else state.model, state.test_loader,
                        criterion=cfg.eval_criterion, device=state.device, amp=cfg.amp,
                        channels_last=cfg.channels_last, tta=cfg.tta)
        record.update(test_loss=test["loss"], test_acc=test["acc"], test_samples=test["samples"])
        record["seconds"] += test["seconds"]
    _check_diverged(state.model, record.get("test_loss", 0.0), epoch)
    if plateau:
        state.scheduler.step(record.get("test_loss", record["train_loss"]))
    state.epoch = epoch
    state.history.append(record)
    return record


def format_record(record: Dict[str, Any]) -> str:
    """One readable line for an epoch record."""
    parts = [f"epoch {record['epoch']:>3}"]
    formats = (("train_loss", "{:.4f}"), ("train_acc", "{:.2f}%"), ("test_loss", "{:.4f}"), ("test_acc", "{:.2f}%"),
               ("lr", "{:.3e}"), ("seconds", "{:.1f}s"), ("phase", "{}"), ("note", "{}"))
    for key, fmt in formats:
        value = record.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key} " + fmt.format(value))
    return " | ".join(parts)
