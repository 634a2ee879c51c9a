"""``run_recipe``: data, model, optimizer, LR finder, schedule, callbacks and ``fit`` for one :class:`Recipe`."""
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn as nn

from pytorch_utils.data import load_datasets, make_loader
from pytorch_utils.data.gpu import GPULoader
from pytorch_utils.data.transforms import get_preset
from pytorch_utils.errors import CheckpointError, ConfigError
from pytorch_utils.io import atomic_write_text, ensure_writable_dir
from pytorch_utils.models import count_parameters, create_model
from pytorch_utils.recipes.base import Recipe, build_optimizer, get_recipe
from pytorch_utils.train import distributed as dist_utils
from pytorch_utils.train.callbacks import EarlyStopping, PhaseSchedule, validate_phases
from pytorch_utils.train.checkpoints import CheckpointManager, HubPusher
from pytorch_utils.train.loop import History, fit, model_output_classes
from pytorch_utils.train.mixing import Mixer, SoftTargetCrossEntropy
from pytorch_utils.train.schedules import ScheduleSpec, build_scheduler
from pytorch_utils.utils import amp_dtype_for, resolve_device, seed_everything, unwrap_model


@dataclass
class RunResult:
    """What :func:`run_recipe` returns: the trained model, its history and where the files went."""

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
    lr_finder: Any = None  # LRFinderResult when the recipe ran the range test
    final: Dict[str, Any] = field(default_factory=dict)  # final/best accuracy, seconds, epochs run, stop reason


def check_model_data(model: nn.Module, num_classes: int) -> None:
    """Fail early when the model's output width differs from the data's class count.

    Raises:
        ConfigError: names both numbers and what to change.
    """
    outputs = model_output_classes(unwrap_model(model))
    if outputs is not None and outputs != num_classes:
        raise ConfigError(f"the model outputs {outputs} classes but the data has {num_classes}; build the "
                          f"model with num_classes={num_classes} (or pick the matching data set)")


def _make_loaders(recipe: Recipe, train_ds, test_ds, device: torch.device, rank: int, world: int):
    use_gpu = recipe.loader == "gpu" or (recipe.loader == "auto" and device.type == "cuda")
    aug_kw = dict(recipe.augmentation_kwargs)
    if use_gpu:
        # Under bf16 autocast the first conv casts its input to bf16 anyway: hand it bf16 and halve the traffic.
        dtype = amp_dtype_for(recipe.amp, device) if amp_dtype_for(recipe.amp, device) == torch.bfloat16 \
            else torch.float32
        channels_last = recipe.channels_last and device.type == "cuda"
        train = GPULoader(train_ds, batch_size=recipe.batch_size, train=True, device=device,
                          augmentation=recipe.augmentation, seed=recipe.seed, channels_last=channels_last,
                          dtype=dtype, num_replicas=world, rank=rank, **aug_kw)
        test = GPULoader(test_ds, batch_size=max(recipe.batch_size, 512), train=False, device=device,
                         augmentation=None, seed=recipe.seed, channels_last=channels_last, dtype=dtype,
                         num_replicas=world, rank=rank)
        return train, test, "gpu"
    train_ds.transform = get_preset(recipe.augmentation, train_ds.mean, train_ds.std, seed=recipe.seed, **aug_kw)
    test_ds.transform = get_preset("test", train_ds.mean, train_ds.std)
    train = make_loader(train_ds, recipe.batch_size, train=True, num_workers=recipe.num_workers, seed=recipe.seed,
                        num_replicas=world, rank=rank)
    test = make_loader(test_ds, max(recipe.batch_size, 512), train=False, num_workers=recipe.num_workers,
                       seed=recipe.seed, num_replicas=world, rank=rank)
    return train, test, "dataloader"


def _resolved_lrs_from_checkpoint(ckpt_dir: Path) -> Optional[Dict[str, float]]:
    """The LR_max/LR_min a resumed run chose with its LR finder (stored in run.json), or None."""
    meta = ckpt_dir.parent / "run.json"
    if meta.is_file():
        data = json.loads(meta.read_text())
        return data.get("lr_finder")
    return None


def run_recipe(
    recipe: Union[Recipe, str],
    data: Optional[str] = None,
    out_dir: Union[str, Path, None] = None,
    *,
    device=None,
    device_fallback: bool = True,
    resume: Union[bool, str] = False,
    root: str = "./data",
    download: bool = False,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = print,
    **overrides,
) -> RunResult:
    """Train a recipe end to end: data, model, (LR finder), schedule, checkpoints, early stopping, history.

    Args:
        recipe: a :class:`Recipe` or a registered name; ``overrides`` replace its fields (``epochs=2``...).
        data: "synthetic", "cifar10", "cifar100" or a folder/zip path; default the recipe's.
        out_dir: where ``history.json``, ``run.json``, ``lr_finder.png`` and ``checkpoints/`` go
            (default ``runs/<recipe name>``).
        device: None picks CUDA when present; device_fallback: use the CPU when the requested GPU is missing
            (False raises ConfigError).
        resume: continue from the newest intact checkpoint in ``out_dir/checkpoints`` (True: start fresh when there is
            none; "required": raise CheckpointError when there is none).
        root, download: torchvision CIFAR folder and whether to download (needs internet: Colab).
        progress: tqdm bars; log: where progress lines go (None: silent).
    Returns:
        a :class:`RunResult`.
    """
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    if overrides:
        recipe = recipe.replace(**overrides)
    recipe.validate()
    rank, world, dist_device = dist_utils.init_distributed() if dist_utils.launched_by_torchrun() else (0, 1, None)
    main = rank == 0
    log = log if main else None
    device = dist_device if dist_device is not None else resolve_device(device, fallback=device_fallback)
    out_dir = Path(out_dir or Path("runs") / recipe.name)
    if main:
        ensure_writable_dir(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if resume == "required" and not any(ckpt_dir.glob("epoch-*.pt")):
        raise CheckpointError(f"resume requested but {str(ckpt_dir)!r} holds no checkpoint; run without --resume")
    seed_everything(recipe.seed)
    progress = progress and main
    start = time.perf_counter()

    data = data or recipe.data
    train_ds, test_ds = load_datasets(data, root=root, download=download, train_limit=recipe.train_limit,
                                      test_limit=recipe.test_limit, seed=recipe.seed, num_classes=recipe.num_classes)
    num_classes = train_ds.num_classes
    model = create_model(recipe.model, num_classes=num_classes, **recipe.model_kwargs)
    check_model_data(model, num_classes)
    train_loader, test_loader, loader_kind = _make_loaders(recipe, train_ds, test_ds, device, rank, world)
    if log:
        log(f"recipe {recipe.name}: {recipe.model} ({count_parameters(model):,} params) on {data} "
            f"({len(train_ds)} train / {len(test_ds)} test, {num_classes} classes), device {device}, "
            f"loader {loader_kind}, {recipe.epochs} epochs of batch {recipe.batch_size}")
    model = model.to(device)
    optimizer = build_optimizer(recipe, model)

    if recipe.label_smoothing or recipe.mixup_alpha or recipe.cutmix_alpha or any(
            p.mixup_alpha or p.cutmix_alpha for p in recipe.phases):
        # Smoothing is folded into the mixer's soft targets once; the loss must not smooth again.
        mixer = Mixer(num_classes, mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha,
                      switch_prob=recipe.mix_switch_prob, prob=recipe.mix_prob, label_smoothing=recipe.label_smoothing)
        criterion = SoftTargetCrossEntropy()
    else:
        mixer, criterion = None, nn.CrossEntropyLoss()

    lr_result, lr_values = None, None
    if recipe.lr_finder is not None:
        lr_values = _resolved_lrs_from_checkpoint(ckpt_dir) if resume else None
        if lr_values is None:
            from pytorch_utils.train.lr_finder import find_lr

            spec = recipe.lr_finder
            lr_result = find_lr(model, optimizer, criterion if mixer is None else nn.CrossEntropyLoss(), train_loader,
                                start_lr=spec.start_lr, end_lr=spec.end_lr, num_iter=spec.iterations(len(train_loader)),
                                suggestion=spec.suggestion, div=spec.div, device=device, amp=recipe.amp,
                                progress=progress)
            lr_values = {"lr_max": lr_result.lr_max, "lr_min": lr_result.lr_min}
        # Under torchrun every rank swept its own shard: all ranks must follow rank 0's schedule.
        lr_values = dist_utils.broadcast_object(lr_values)
        if lr_values is not None and lr_result is not None:
            if main:
                lr_result.plot(save=out_dir / "lr_finder.png")
            if log:
                log(f"LR finder ({recipe.lr_finder.suggestion}): LR_max {lr_values['lr_max']:.3e}, LR_min "
                    f"{lr_values['lr_min']:.3e} (LR_max / {recipe.lr_finder.div:g})")

    def with_lrs(spec: Optional[ScheduleSpec]) -> Optional[ScheduleSpec]:
        if spec is None or lr_values is None:
            return spec
        params = dict(spec.params)
        if "max_lr" in params or spec.name in ("one_cycle_linear", "onecycle", "cyclic"):
            params["max_lr"] = lr_values["lr_max"]
        if spec.name == "one_cycle_linear":
            params["min_lr"] = lr_values["lr_min"]
        if spec.name == "cyclic":
            params["base_lr"] = lr_values["lr_min"]
        return ScheduleSpec(spec.name, params)

    callbacks = []
    hub = HubPusher(recipe.hub_repo, every=recipe.hub_every) if (recipe.hub_repo and main) else None
    config = {"recipe": recipe.to_dict(), "data": str(data), "lr_finder": lr_values}
    callbacks.append(CheckpointManager(ckpt_dir, keep_last=recipe.keep_last, monitor=recipe.monitor,
                                       mode="min" if recipe.monitor.endswith("loss") else "max",
                                       resume=resume, config=config, hub=hub, log=log,
                                       every=recipe.checkpoint_every))
    scheduler = None
    if recipe.phases:
        phases = [dataclasses.replace(p, scheduler=with_lrs(p.scheduler)) for p in recipe.phases]
        callbacks.append(PhaseSchedule(validate_phases(phases, epochs=recipe.epochs), seed=recipe.seed))
    else:
        scheduler = build_scheduler(with_lrs(recipe.scheduler), optimizer, len(train_loader), recipe.epochs)
    if recipe.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=recipe.monitor, mode="min" if recipe.monitor.endswith("loss") else "max",
                                       patience=recipe.early_stopping_patience))
    if main:
        atomic_write_text(out_dir / "run.json", json.dumps(config, indent=2, default=str))

    ema = None
    if recipe.ema_decay:
        from pytorch_utils.train.ema import ModelEMA

        ema = ModelEMA(model, decay=recipe.ema_decay)
    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if recipe.compile:
        train_model = torch.compile(train_model)
    history = fit(
        train_model, train_loader, test_loader, epochs=recipe.epochs, optimizer=optimizer, criterion=criterion,
        scheduler=scheduler, device=device, amp=recipe.amp, channels_last=recipe.channels_last and device.type == "cuda",
        mixer=mixer, grad_clip=recipe.grad_clip, ema=ema, tta=recipe.tta, callbacks=callbacks, progress=progress,
        log=log,
    )
    seconds = time.perf_counter() - start
    best = history.best("test_acc")
    last = history[-1] if history else {}
    final = {
        "recipe": recipe.name, "model": recipe.model, "data": str(data), "device": str(device),
        "epochs_run": len(history), "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
        "best_test_acc": best["test_acc"] if best else None, "best_epoch": best["epoch"] if best else None,
        "train_acc": last.get("train_acc"), "seconds": seconds,
        "stopped_early": any(r.get("early_stop") for r in history),
        "parameters": count_parameters(model), "tta": recipe.tta,
    }
    if main:
        history.save_json(out_dir / "history.json")
        atomic_write_text(out_dir / "summary.json", json.dumps(final, indent=2))
    return RunResult(recipe=recipe, model=unwrap_model(model), history=history, out_dir=out_dir,
                     train_loader=train_loader, test_loader=test_loader, classes=tuple(train_ds.classes),
                     mean=tuple(train_ds.mean), std=tuple(train_ds.std), device=device, lr_finder=lr_result,
                     final=final)
