"""``run_recipe``: data, model, optimizer, LR finder, schedule, callbacks and ``fit`` for one :class:`Recipe`."""
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from pytorch_utils.data import load_datasets, make_loader
from pytorch_utils.data.gpu import GPULoader
from pytorch_utils.data.input_size import choose_input_size
from pytorch_utils.errors import CheckpointError, ConfigError
from pytorch_utils.io import atomic_write_text
from pytorch_utils.models import count_parameters, create_model
from pytorch_utils.recipes.base import Recipe, build_optimizer, get_recipe
from pytorch_utils.runlock import LOCK_NAME, run_lock
from pytorch_utils.train import distributed as dist_utils
from pytorch_utils.train.callbacks import EarlyStopping, PhaseSchedule
from pytorch_utils.train.checkpoints import (
    CheckpointManager,
    HubPusher,
    check_model_name,
    latest_checkpoint,
    repair_best,
)
from pytorch_utils.train.history import HistoryWriter, summarize
from pytorch_utils.train.loop import evaluate, fit, model_output_classes
from pytorch_utils.train.mixing import Mixer, SoftTargetCrossEntropy
from pytorch_utils.train.schedules import follows_run_length
from pytorch_utils.train.state import History, TrainConfig
from pytorch_utils.utils import amp_dtype_for, resolve_device, seed_everything, unwrap_model
from pytorch_utils.viz.report import ReportData

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`run_recipe` returns: the trained model, its history, loaders, data facts and where files went."""

    recipe: Recipe
    model: nn.Module
    history: History
    out_dir: Path
    train_loader: Any
    test_loader: Any
    classes: tuple
    mean: tuple
    std: tuple
    device: torch.device
    input_size: Tuple[int, int] = (32, 32)  # (H, W) the model trained and was evaluated at
    lr_finder: Any = None  # LRFinderResult when the recipe ran the range test
    eval_model: Optional[nn.Module] = None  # what the test numbers measured: the EMA copy when kept, else model
    final: Dict[str, Any] = field(default_factory=dict)  # final/best accuracy, seconds, epochs run, stop reason


def report_data(result: RunResult, model: Optional[nn.Module] = None, train_transform=None) -> ReportData:
    """What ``viz.report`` needs from a run (evaluation belongs here, viz only draws): ``result`` evaluated once on
    its test loader (no TTA, so it can differ a little from the run's final number), with its classes, mean/std,
    history and LR finder. ``model``: default ``result.eval_model``; ``train_transform``: one to preview (uint8 HWC
    -> normalized CHW)."""
    model = model if model is not None else result.eval_model
    evaluation = evaluate(model, result.test_loader, return_outputs=True, return_inputs=True)
    return ReportData(evaluation=evaluation, classes=list(result.classes), mean=result.mean, std=result.std,
                      history=list(result.history), lr_finder=result.lr_finder, model=model,
                      train_transform=train_transform)


def check_model_data(model: nn.Module, num_classes: int) -> None:
    """Raise ConfigError when the model's output width differs from the data's class count."""
    outputs = model_output_classes(unwrap_model(model))
    if outputs is not None and outputs != num_classes:
        raise ConfigError(f"the model outputs {outputs} classes but the data has {num_classes}; build the "
                          f"model with num_classes={num_classes} (or pick the matching data set)")


def _make_loaders(recipe: Recipe, train_ds, test_ds, device: torch.device, rank: int, world: int, size: int):
    use_gpu = recipe.loader == "gpu" or (recipe.loader == "auto" and device.type == "cuda")
    aug_kw = {k: v for k, v in recipe.augmentation_kwargs.items() if k != "size"}  # the size is decided apart
    if use_gpu:
        # Under bf16 autocast the first conv casts its input to bf16 anyway: hand it bf16 and halve the traffic.
        bf16 = amp_dtype_for(recipe.amp, device) == torch.bfloat16
        make, kwargs = GPULoader, dict(device=device, channels_last=recipe.channels_last and device.type == "cuda",
                                       dtype=torch.bfloat16 if bf16 else torch.float32)
    else:
        make, kwargs = make_loader, dict(num_workers=recipe.num_workers)
    kwargs.update(seed=recipe.seed, num_replicas=world, rank=rank)
    train = make(train_ds, batch_size=recipe.batch_size, train=True, **kwargs)
    test = make(test_ds, batch_size=max(recipe.batch_size, 512), train=False, **kwargs)
    train.set_augmentation(recipe.augmentation, size=size, **aug_kw)
    test.set_augmentation("test", size=size)  # evaluation stays at the declared size (also under progressive resizing)
    return train, test, "gpu" if use_gpu else "dataloader"


# Recipe fields a resumed run may change: bookkeeping and speed settings that do not change what is trained.
RESUME_FREE_FIELDS = ("name", "description", "num_workers", "hub_repo", "hub_every", "compile", "keep_last",
                      "checkpoint_every", "tensorboard", "max_side", "max_total_pixels")  # limits: same data
RUN_FILES = ("run.json", "history.json", "history.csv", "summary.json", "lr_finder.png", "checkpoints", "tensorboard",
             "model.pt", "model.pt.json", "model.onnx", "model.onnx.json", "report")  # + export, report output


def check_resume_compatible(checkpoint: Dict[str, Any], recipe: Recipe, data: str) -> None:
    """Raise CheckpointError (each differing field, saved and requested) when ``checkpoint`` was written with other
    settings: a changed LR, model or data would silently give neither the old run nor a new one. ``epochs`` may
    change when no schedule's shape follows the run's length (phases keep their declared spans, the last one
    aside)."""
    source = checkpoint.get("_path", "the checkpoint")
    check_model_name(checkpoint, recipe.model, source)
    config = checkpoint.get("config") or {}
    saved = config.get("recipe") or {}
    current = recipe.to_dict()
    diffs = [k for k in current if k not in RESUME_FREE_FIELDS and k in saved and saved[k] != current[k]]
    # A run past the last phase's end stretches that phase's schedule (its shape may follow the run's length).
    stretched = recipe.phases and max(recipe.epochs, saved.get("epochs", 0)) > recipe.phases[-1].end
    last_phase = [p.scheduler for p in recipe.phases if p.scheduler is not None][-1:] if stretched else []
    if "epochs" in diffs and not any(follows_run_length(spec) for spec in [recipe.scheduler, *last_phase]):
        diffs.remove("epochs")
    lines = [f"{k}: saved {saved[k]!r}, now {current[k]!r}" for k in diffs]
    if config.get("data") is not None and str(config["data"]) != str(data):
        lines.append(f"data: saved {config['data']!r}, now {str(data)!r}")
    if lines:
        raise CheckpointError(f"{source} was written with other settings ({'; '.join(lines)}); resume with the "
                              "settings in run.json, or start a new run with another out_dir")


def find_resume_checkpoint(resume: Union[bool, str], out_dir: Path, recipe: Recipe, data: str
                           ) -> Optional[Dict[str, Any]]:
    """The checkpoint a run resumes from, loaded and checked before any work; None for a fresh start (also for a
    run stopped before its first checkpoint: seeded, epoch 1 again is what it would have done). Raises
    CheckpointError: ``resume="required"`` and no checkpoint (naming corrupt ones), or settings differ."""
    if not resume:
        return None
    ckpt_dir = out_dir / "checkpoints"
    skipped: list = []
    ckpt = latest_checkpoint(ckpt_dir, skipped)
    if ckpt is None:
        if (out_dir / "run.json").is_file() and not skipped:
            log.info(f"the run in {str(out_dir)!r} stopped before its first checkpoint: starting it again from epoch 1")
            return None
        if resume == "required":
            extra = f" (corrupt: {', '.join(skipped)})" if skipped else ""
            raise CheckpointError(f"resume requested but {str(ckpt_dir)!r} holds no checkpoint{extra}; "
                                  "start a fresh run (resume=False)")
        return None
    check_resume_compatible(ckpt, recipe, data)
    repair_best(ckpt_dir, ckpt)  # a kill between the epoch file and best.pt leaves best.pt stale
    return ckpt


def archive_previous_run(out_dir: Path) -> Optional[Path]:
    """Move an earlier run's files to ``<out_dir>/previous/<timestamp>`` (returned; None when there were none), so a
    fresh run neither prunes its checkpoints for the old run's, nor overwrites ``best.pt``, nor resumes the old run."""
    present = [out_dir / name for name in RUN_FILES if (out_dir / name).exists()]
    if not present:
        return None
    dest = out_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    dest.parent.mkdir(exist_ok=True)  # never parents: an out_dir gone since the start is not re-created
    dest.mkdir()
    for path in present:
        path.rename(dest / path.name)
    log.info(f"an earlier run's files in {str(out_dir)!r} were moved to {str(dest)!r} (resume=True continues a run)")
    return dest


@dataclass
class _Run:
    """What the steps of :func:`run_recipe` share: the validated recipe, where it runs and what it resumes."""

    recipe: Recipe
    data: str
    out_dir: Path
    device: torch.device
    rank: int
    world: int
    checkpoint: Optional[Dict[str, Any]]
    progress: bool
    history_writer: Optional[HistoryWriter] = None  # rank 0 only: history.json/.csv after every epoch
    input_size: Optional[int] = None  # the square side evaluation runs at, chosen in _build

    @property
    def main(self) -> bool:
        return self.rank == 0


def _prepare(recipe: Union[Recipe, str], overrides: Dict[str, Any], data, out_dir, device, device_fallback: bool,
             resume, progress: bool, cleanup: contextlib.ExitStack) -> _Run:
    """Everything that can refuse the run, before any data is loaded: the recipe, the device, the folder, a resume."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    recipe = (recipe.replace(**overrides) if overrides else recipe).validate()
    launched = dist_utils.launched_by_torchrun()
    rank, world, dist_device = dist_utils.init_distributed(device=device) if launched else (0, 1, None)
    device = dist_device if dist_device is not None else resolve_device(device, fallback=device_fallback)
    out_dir = Path(out_dir or Path("runs") / recipe.name)
    data = data or recipe.data
    if rank == 0:
        cleanup.enter_context(run_lock(out_dir))  # a second run into this folder is refused while this one runs
        planted = [p for p in map(out_dir.joinpath, ("checkpoints", "previous", "tensorboard"))
                   if p.is_symlink() or (p.exists() and not p.is_dir())]  # writes would land outside out_dir
        if planted:
            raise ConfigError(f"{str(planted[0])!r} must be a folder of the run, not a link or a file: remove it")
    else:  # under torchrun only rank 0 reports progress (a worker process: its package logger is ours to set)
        logging.getLogger("pytorch_utils").setLevel(logging.WARNING)
    checkpoint = find_resume_checkpoint(resume, out_dir, recipe, data)
    writer = HistoryWriter(out_dir, tensorboard=recipe.tensorboard) if rank == 0 else None  # a missing extra fails now
    seed_everything(recipe.seed)
    return _Run(recipe, data, out_dir, device, rank, world, checkpoint, progress and rank == 0, writer)


def _build(run: _Run, root: str, download: bool):
    """Data, model, loaders, the run folder, optimizer, loss and mixer (a resumed run's weights are restored by
    ``fit``)."""
    recipe, device = run.recipe, run.device
    train_ds, test_ds = load_datasets(run.data, root=root, download=download, train_limit=recipe.train_limit,
                                      test_limit=recipe.test_limit, seed=recipe.seed, num_classes=recipe.num_classes,
                                      max_side=recipe.max_side, max_total_pixels=recipe.max_total_pixels)
    num_classes = train_ds.num_classes
    model = create_model(recipe.model, num_classes=num_classes, **recipe.model_kwargs)
    check_model_data(model, num_classes)
    # The declared size (augmentation_kwargs["size"], else the first phase's) or the data's: checked before training.
    requested = recipe.augmentation_kwargs.get("size") or next((p.input_size for p in recipe.phases if p.input_size),
                                                               None)
    run.input_size, _ = choose_input_size(model, train_ds.image_size, requested)
    train_loader, test_loader, kind = _make_loaders(recipe, train_ds, test_ds, device, run.rank, run.world,
                                                    run.input_size)
    per_rank = f" per rank, {recipe.batch_size * run.world} in all over {run.world} ranks" if run.world > 1 else ""
    log.info(f"recipe {recipe.name}: {recipe.model} ({count_parameters(model):,} params) on {run.data} "
             f"({len(train_ds)} train / {len(test_ds)} test, {num_classes} classes), device {device}, "
             f"loader {kind}, {recipe.epochs} epoch{'s' * (recipe.epochs != 1)} of batch {recipe.batch_size}{per_rank}")
    if run.main and run.checkpoint is None:
        archive_previous_run(run.out_dir)
    dist_utils.barrier()  # every rank waits until rank 0 has moved an earlier run aside
    model = model.to(device)
    if run.world > 1 and recipe.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BN statistics over the global batch
    if recipe.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if recipe.label_smoothing or recipe.mixup_alpha or recipe.cutmix_alpha or any(
            p.mixup_alpha or p.cutmix_alpha for p in recipe.phases):
        # Smoothing is folded into the mixer's soft targets once; the loss must not smooth again.
        mixer = Mixer(num_classes, mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha,
                      switch_prob=recipe.mix_switch_prob, prob=recipe.mix_prob, label_smoothing=recipe.label_smoothing)
        criterion = SoftTargetCrossEntropy()
    else:
        mixer, criterion = None, nn.CrossEntropyLoss()
    return train_ds, model, train_loader, test_loader, build_optimizer(recipe, model), criterion, mixer


def _choose_lrs(run: _Run, model, optimizer, criterion, train_loader) -> Tuple[Optional[Dict[str, float]], Any]:
    """LR_max / LR_min from the LR finder (a resumed run reuses its checkpoint's), and the sweep's result."""
    spec, lr_result = run.recipe.lr_finder, None
    if spec is None:
        return None, None
    # A resumed run keeps the LRs its first part chose (stored in every checkpoint): a new sweep could differ.
    lr_values = (run.checkpoint.get("config") or {}).get("lr_finder") if run.checkpoint is not None else None
    if lr_values is None:
        from pytorch_utils.train.lr_finder import find_lr

        lr_result = find_lr(model, optimizer, criterion, train_loader, spec, device=run.device, amp=run.recipe.amp,
                            progress=run.progress)
        lr_values = {"lr_max": lr_result.lr_max, "lr_min": lr_result.lr_min}
    # Under torchrun every rank swept its own shard: all ranks follow rank 0's schedule.
    lr_values = dist_utils.broadcast_object(lr_values)
    if lr_result is not None:
        if run.main and run.out_dir.is_dir():  # a vanished folder is not re-created: the next write stops the run
            from pytorch_utils.viz.lr_finder import plot_lr_finder  # the plot lives in viz: train never draws

            plot_lr_finder(lr_result, save=run.out_dir / "lr_finder.png")
        early = "; the sweep stopped early: the loss diverged" if lr_result.diverged else ""
        log.info(f"LR finder ({spec.suggestion}): LR_max {lr_values['lr_max']:.3e}, LR_min "
                 f"{lr_values['lr_min']:.3e} (LR_max / {spec.div:g}){early}")
    return lr_values, lr_result


def _callbacks(run: _Run, recipe: Recipe, config: Dict[str, Any]) -> list:
    """Checkpoints, phases, early stopping and the history files, in that order."""
    mode = "min" if recipe.monitor.endswith("loss") else "max"
    hub = HubPusher(recipe.hub_repo, every=recipe.hub_every) if (recipe.hub_repo and run.main) else None
    callbacks = [CheckpointManager(run.out_dir / "checkpoints", keep_last=recipe.keep_last, monitor=recipe.monitor,
                                   mode=mode, config=config, hub=hub, every=recipe.checkpoint_every)]
    if recipe.phases:
        callbacks.append(PhaseSchedule(recipe.phases))
    if recipe.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=recipe.monitor, mode=mode, patience=recipe.early_stopping_patience,
                                       start_epoch=recipe.early_stopping_start))
    if run.history_writer is not None:  # last: its files hold what the other callbacks added to each record
        callbacks.append(run.history_writer)
    return callbacks


def run_recipe(recipe: Union[Recipe, str], data: Optional[str] = None, out_dir: Union[str, Path, None] = None, *,
               device=None, device_fallback: bool = True, resume: Union[bool, str] = False, root: str = "./data",
               download: bool = False, progress: bool = True, **overrides) -> RunResult:
    """Train a recipe (a :class:`Recipe` or a registered name, fields replaced by ``overrides``) end to end, in the
    order of torchvision's reference ``main()``: checks > data > model > optimizer > LR > schedule > loop > save.
    ``data``: "synthetic", "cifar10", "cifar100" or a folder/zip (default the recipe's); ``out_dir``: default
    ``runs/<recipe name>``; ``device``: None picks the best, with ``device_fallback`` to the CPU; ``resume``: True
    continues from the newest intact checkpoint if any, "required" raises CheckpointError without one; ``root``,
    ``download``: torchvision's CIFAR. Returns a :class:`RunResult`. ConfigError, UnknownNameError and
    CheckpointError are raised before any data is loaded; CheckpointError when ``out_dir`` vanishes or turns read-only
    mid-run (an unmounted Drive: the run stops, nothing is written elsewhere)."""
    with contextlib.ExitStack() as cleanup:  # the run-folder lock taken in _prepare is released however it ends
        run = _prepare(recipe, overrides, data, out_dir, device, device_fallback, resume, progress, cleanup)
        try:
            return _train(run, root, download)
        except Exception as exc:
            raise _lost_folder(run) or exc


def _lost_folder(run: _Run) -> Optional[CheckpointError]:
    """The error to report when the run folder vanished or turned read-only since the start (an unmounted Drive: what
    failed then is a consequence), else None."""
    # Gone: also a lost mount (ENOTCONN), or a folder made anew in its place (no lock of ours in it).
    state = "read-only" if os.path.isfile(run.out_dir / LOCK_NAME) else "gone"
    if run.main and (state == "gone" or not os.access(run.out_dir, os.W_OK | os.X_OK)):
        return CheckpointError(f"run folder {str(run.out_dir)!r} vanished or is not writable ({state}); nothing was "
                               "written elsewhere; when it is back, resume with resume=True")
    return None


def _train(run: _Run, root: str, download: bool) -> RunResult:
    """Everything after the checks: data, model, LR finder, schedule, ``fit``; rank 0 writes ``history.json`` and
    ``summary.json``."""
    recipe, device, start = run.recipe, run.device, time.perf_counter()
    train_ds, model, train_loader, test_loader, optimizer, criterion, mixer = _build(run, root, download)
    config = {"recipe": recipe.to_dict(), "data": str(run.data), "lr_finder": None,
              # What load_run/predict need to use the model without its data set (classes, normalization, size).
              "classes": list(train_ds.classes), "mean": list(train_ds.mean), "std": list(train_ds.std),
              "input_size": [run.input_size, run.input_size]}
    if run.main and run.checkpoint is None:  # marks the folder as a started run (see find_resume_checkpoint)
        atomic_write_text(run.out_dir / "run.json", json.dumps(config, indent=2, default=str))
    # The sweep takes hard labels: a mixer's soft-target loss is for training only.
    lr_values, lr_result = _choose_lrs(run, model, optimizer, criterion if mixer is None else nn.CrossEntropyLoss(),
                                       train_loader)
    config["lr_finder"] = lr_values
    if run.main and run.checkpoint is None and lr_values is not None:  # the marker above lacks the chosen LRs
        atomic_write_text(run.out_dir / "run.json", json.dumps(config, indent=2, default=str))
    # The LR finder's LRs go where each schedule's registry entry says (max_lr / min_lr, or the start lr).
    trained = recipe.with_lrs(lr_values["lr_max"], lr_values["lr_min"]) if lr_values else recipe
    ema = None
    if recipe.ema_decay:
        from pytorch_utils.train.ema import ModelEMA

        ema = ModelEMA(model, decay=recipe.ema_decay)  # after the device/layout moves: the copy takes both
    train_model = model
    if run.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if recipe.compile:
        train_model = torch.compile(train_model)
    settings = TrainConfig(device=device, amp=recipe.amp, channels_last=recipe.channels_last and device.type == "cuda",
                           mixer=mixer, grad_clip=recipe.grad_clip, accumulate_steps=recipe.accumulate_steps, ema=ema,
                           tta=recipe.tta, progress=run.progress)
    history = fit(train_model, train_loader, test_loader, epochs=recipe.epochs, optimizer=optimizer,
                  criterion=criterion, scheduler=trained.scheduler, callbacks=_callbacks(run, trained, config),
                  resume=run.checkpoint, config=settings)
    final = {"recipe": recipe.name, "model": recipe.model, "data": str(run.data), "device": str(device),
             **summarize(history), "seconds": time.perf_counter() - start, "parameters": count_parameters(model),
             "tta": recipe.tta}
    if run.main:  # the summary numbers: rank 0 writes them
        history.save_json(run.out_dir / "history.json")
        atomic_write_text(run.out_dir / "summary.json", json.dumps(final, indent=2))
    model = unwrap_model(model)
    return RunResult(recipe=recipe, model=model, history=history, out_dir=run.out_dir, train_loader=train_loader,
                     test_loader=test_loader, classes=tuple(train_ds.classes), mean=tuple(train_ds.mean),
                     std=tuple(train_ds.std), device=device, input_size=(run.input_size,) * 2, lr_finder=lr_result,
                     eval_model=ema.module if ema is not None else model, final=final)
