"""S10 recipe end to end, several data paths side by side in one process: wall time (with and without start-up)
and test accuracy per variant.

Variants (``--variants``, comma-separated, run one after the other, each from the recipe's seed):
    fast              loader="gpu": the whole uint8 data set on the device, batched augmentation there; amp "auto"
                      (bf16 on an H100), channels_last on CUDA; ``--compile`` adds torch.compile
    fast-compile      the same, always compiled
    dataloader-<N>w   loader="dataloader": albumentations in N DataLoader worker processes (the seed-style path)

Each variant is one ``run_recipe(...)`` call, timed from the call to its return. The run is split, without changing
what the package does, by timing probes: thin wrappers around the package functions that ``run_recipe`` calls
(data loading, loader construction, LR finder and its plot, ``fit``, checkpoint writes), installed for that call
only and removed in ``finally``. A record's fields:

    wall_s                  run_recipe from call to return (data already decoded once, see decode_s)
    startup_s               call -> first epoch starts (data set build, upload, model, optimizer, LR finder + plot),
                            plus compile_warmup_s when compiled
    wall_s_without_startup  sum of the epochs' train+test seconds from the history, minus compile_warmup_s
    overhead_s              the rest: checkpoint writes (see --checkpoint-every), history/summary files
    compile_warmup_s        compiled runs: first epoch minus the median of the others (null with one epoch)
    decode_s                decoding the data once before the variants (shared by all of them, not in wall_s)
    wall_s_total            everything this variant needed, from the process start (``wall_s_total_from``):
                            interpreter + imports (process_start_s), CUDA init, decode (setup_s), then the variant
                            (variant_s: run_recipe with upload, LR finder, training, evaluation); the time of the
                            variants before it is not counted, so a one-variant run is its plain wall time

Learning rates (``--shared-lr``, default on): the first variant that runs the recipe's LR finder hands its LR_max /
LR_min to the others, which run with ``lr_finder=None`` and those values in the schedule, so accuracy differences
between variants are not differences between LR-finder suggestions (``lr_source``: lr_finder | shared | recipe;
``lr_from_variant``). ``--no-shared-lr``: every variant runs its own finder.

Checkpoints: ``--checkpoint-every N`` (default: the number of epochs, i.e. one write at the end) is passed as the
recipe field ``checkpoint_every``; recorded as ``checkpoint_every``.

Usage (see benchmarks/README.md for the GPU commands):
    python benchmarks/bench_s10.py --data ../shared/data/cifar10-jpeg.zip
    python benchmarks/bench_s10.py --epochs 1 --train-limit 512 --test-limit 256 --batch-size 64   # CPU smoke run
"""
import argparse
import contextlib
import functools
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

if __package__ in (None, ""):  # run as a script: make `benchmarks` and the checkout's pytorch_utils importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import clock, emit, note  # noqa: E402

BENCH = "s10"
DEFAULT_VARIANTS = "fast,dataloader-2w,dataloader-8w"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, epochs=None, batch_size=None, variants=DEFAULT_VARIANTS)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per variant (default: the recipe's, 24)")
    parser.add_argument("--recipe", default="s10", help="registered recipe to run (default %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe field for every variant, value as JSON (repeatable), e.g. "
                             "--set amp=null --set tta=null")
    parser.add_argument("--run-dir", default=None,
                        help="keep each variant's run files (checkpoints, history) under RUN_DIR/<variant>; "
                             "default: a temporary folder deleted after the variant")
    parser.add_argument("--shared-lr", action=argparse.BooleanOptionalAction, default=True,
                        help="run the LR finder once (the first variant) and give its LR_max/LR_min to the other "
                             "variants (default on; --no-shared-lr: one finder per variant)")
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                        help="recipe field checkpoint_every: epochs between checkpoint writes (default: the run's "
                             "epochs, one write at the end; --set checkpoint_every=N works too)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines on stderr")
    args = parser.parse_args(argv)
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        parser.error("--checkpoint-every must be >= 1")
    return args


def build_recipe(args: argparse.Namespace, loader: str, num_workers: Optional[int], compile_: bool):
    """The recipe of one variant: the registered recipe, the run's options (``--epochs`` through
    :func:`common.shortened`), ``--set`` overrides, the variant's loader fields (in that order, so a variant always
    gets its own loader)."""
    from pytorch_utils.recipes import get_recipe
    from pytorch_utils.recipes.base import parse_override

    recipe = get_recipe(args.recipe)
    base: Dict[str, Any] = {"seed": args.seed}
    for key in ("batch_size", "train_limit", "test_limit"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    recipe = recipe.replace(**base)
    if args.epochs is not None:
        recipe = common.shortened(recipe, args.epochs)
    set_keys = set()
    for text in args.set:
        override = parse_override(recipe, text)
        set_keys.update(override)
        recipe = recipe.replace(**override)
    if args.checkpoint_every is not None:
        recipe = recipe.replace(checkpoint_every=args.checkpoint_every)
    elif "checkpoint_every" not in set_keys:
        recipe = recipe.replace(checkpoint_every=recipe.epochs)  # one write at the end: not in the epochs' budget
    return recipe.replace(loader=loader, num_workers=num_workers, compile=compile_).validate()


def with_shared_lrs(recipe, lr_max: float, lr_min: float):
    """``recipe`` without its LR finder, its schedule(s) given ``lr_max``/``lr_min`` as ``run_recipe`` fills a
    finder's result (``Recipe.with_lrs``)."""
    return recipe.with_lrs(lr_max, lr_min)


# --------------------------------------------------------------------------------------------- timing probes


def _timing(fn: Callable, key: str, timings: Dict[str, float], device) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = clock(device)
        try:
            return fn(*args, **kwargs)
        finally:
            timings[key] = timings.get(key, 0.0) + clock(device) - start
    return wrapper


def _marking(fn: Callable, key: str, timings: Dict[str, float], device) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        timings[f"{key}_start"] = clock(device)
        try:
            return fn(*args, **kwargs)
        finally:
            timings[f"{key}_end"] = clock(device)
    return wrapper


@contextlib.contextmanager
def probes(device, timings: Dict[str, float]) -> Iterator[List[str]]:
    """Wrap the package functions ``run_recipe`` calls with timers (absolute marks for ``fit``), for the ``with``
    body only. Yields the names of the probes that could be installed (a probe whose target the package no longer
    has is skipped, and its field is null)."""
    import pytorch_utils.recipes.runner as runner
    import pytorch_utils.train.checkpoints as checkpoints
    import pytorch_utils.train.lr_finder as lr_finder
    import pytorch_utils.viz.lr_finder as lr_plot

    targets = [
        (runner, "load_datasets", "data_s", _timing),
        (runner, "_make_loaders", "loaders_s", _timing),
        (lr_finder, "find_lr", "lr_finder_s", _timing),  # run_recipe imports it from the module at call time
        (lr_plot, "plot_lr_finder", "lr_plot_s", _timing),  # imported from its module at call time too
        (runner, "fit", "fit", _marking),
        (checkpoints, "make_checkpoint", "checkpoint_s", _timing),
        (checkpoints, "save_checkpoint", "checkpoint_s", _timing),
        (checkpoints, "load_checkpoint", "checkpoint_s", _timing),
    ]
    saved, installed = [], []
    try:
        for owner, name, key, make in targets:
            original = owner.__dict__.get(name)
            if original is None:
                continue
            saved.append((owner, name, original))
            setattr(owner, name, make(original, key, timings, device))
            installed.append(f"{getattr(owner, '__name__', owner)}.{name}")
        yield installed
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


# --------------------------------------------------------------------------------------------- one variant


def run_variant(name: str, args: argparse.Namespace, device, env: Dict[str, Any],
                extra: Dict[str, Any], shared_lrs: Optional[Dict[str, Any]] = None,
                before_s: Optional[float] = None) -> Dict[str, Any]:
    """Train the recipe once as variant ``name``; returns its record (not yet emitted).

    Args:
        shared_lrs: ``{"lr_max", "lr_min", "variant"}`` from an earlier variant's LR finder: run without a finder,
            with these rates (only when the recipe has a finder).
        before_s: seconds spent before the variants (process start-up, setup); ``wall_s_total`` adds this
            variant's own seconds to it (None: no ``wall_s_total``).
    """
    import torch

    from pytorch_utils.recipes import run_recipe
    from pytorch_utils.utils import amp_dtype_for

    variant_start = clock(device)
    loader, workers, compile_ = common.parse_variant(name)
    compile_ = compile_ or (args.compile and name == "fast")
    recipe = build_recipe(args, loader, workers, compile_)
    has_finder = recipe.lr_finder is not None
    if has_finder and shared_lrs is not None:
        recipe = with_shared_lrs(recipe, shared_lrs["lr_max"], shared_lrs["lr_min"])
        lr_source, lr_from = "shared", shared_lrs["variant"]
    else:
        lr_source, lr_from = ("lr_finder", name) if has_finder else ("recipe", None)
    common.release_memory(device)
    common.reset_peak_memory(device)
    timings: Dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        if args.run_dir:
            out_dir = Path(args.run_dir) / name
        else:
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench_s10_{name}_")))
        stack.enter_context(probes(device, timings))
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))  # torch-lr-finder prints a line: not JSON
        start = clock(device)
        common.log_package_to_stderr(quiet=args.quiet)
        result = run_recipe(recipe, data=args.data, out_dir=out_dir, device=device, device_fallback=False,
                            root=args.root, progress=False)
        wall = clock(device) - start

    history = result.history
    epoch_s = [float(r["seconds"]) for r in history]
    train_s = [float(r["train_seconds"]) for r in history]
    compile_warmup = None
    if compile_ and len(epoch_s) >= 2:
        compile_warmup = max(0.0, epoch_s[0] - common.median(epoch_s[1:]))
    fit_start = timings.get("fit_start")
    before_fit = (fit_start - start) if fit_start is not None else None
    startup = None if before_fit is None else before_fit + (compile_warmup or 0.0)
    without = sum(epoch_s) - (compile_warmup or 0.0)
    known = sum(timings.get(k, 0.0) for k in ("data_s", "loaders_s", "lr_finder_s", "lr_plot_s"))
    steps = len(result.train_loader)
    lr = result.lr_finder
    if lr_source == "shared":
        lr_max, lr_min = shared_lrs["lr_max"], shared_lrs["lr_min"]
    else:
        lr_max, lr_min = getattr(lr, "lr_max", None), getattr(lr, "lr_min", None)
    record: Dict[str, Any] = {
        "bench": BENCH, "variant": name, **env, "data": common.data_label(args.data), "data_arg": args.data,
        "epochs": len(history), "wall_s": wall, "wall_s_without_startup": without, "startup_s": startup,
        "test_acc": result.final.get("test_acc"), "wall_s_total": None,
        "best_test_acc": result.final.get("best_test_acc"),
        "train_acc": result.final.get("train_acc"), "test_loss": result.final.get("test_loss"),
        "overhead_s": None if startup is None else wall - startup - without,
        "compile_warmup_s": compile_warmup, **extra,
        "data_s": timings.get("data_s"), "loaders_s": timings.get("loaders_s"),
        "lr_finder_s": timings.get("lr_finder_s"), "lr_plot_s": timings.get("lr_plot_s"),
        "model_and_other_startup_s": None if before_fit is None else before_fit - known,
        "checkpoint_s": timings.get("checkpoint_s"),
        "epoch_s_median": common.median(epoch_s), "epoch_s_first": epoch_s[0] if epoch_s else None,
        "train_s_median": common.median(train_s),
        "train_images_per_s": steps * recipe.batch_size * len(train_s) / sum(train_s) if sum(train_s) > 0 else None,
        "epoch_seconds": epoch_s, "train_seconds": train_s,
        "recipe": recipe.name, "model": recipe.model, "loader": loader, "num_workers": workers,
        "compile": compile_, "amp": common.amp_label(amp_dtype_for(recipe.amp, device)),
        "channels_last": bool(recipe.channels_last and device.type == "cuda"), "tta": recipe.tta,
        "batch_size": recipe.batch_size, "steps_per_epoch": steps, "train_images": len(result.train_loader.dataset),
        "test_images": len(result.test_loader.dataset),
        "lr_max": lr_max, "lr_min": lr_min, "lr_source": lr_source, "lr_from_variant": lr_from,
        "shared_lr": bool(args.shared_lr), "checkpoint_every": recipe.checkpoint_every,
        "peak_memory_gib": common.peak_memory_gib(device), "seed": recipe.seed,
        "overrides": list(args.set) or None,
        # Read after the run: run_recipe may switch cuDNN autotuning on for CUDA runs.
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    del result
    common.release_memory(device)
    variant_s = clock(device) - variant_start
    record["variant_s"] = variant_s
    record["wall_s_total"] = None if before_s is None else before_s + variant_s
    return record


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Run the chosen variants one after the other; print (and return) one JSON record per variant.

    A variant that raises gets a record with an ``error`` field and the others still run.
    """
    import torch

    from pytorch_utils.data import load_datasets

    # wall_s_total counts from the process start when run from the command line, else from this call.
    main_start = time.perf_counter()
    process_start_s = common.process_age_s() if argv is None else None
    args = parse_args(argv)
    variants = common.split_variants(args.variants)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    device = common.resolve_bench_device(args.device)
    cuda_init = common.init_device(device)
    env = common.environment(device)

    # Decode once: load_datasets caches decoded image folders/zips in-process under the same arguments that
    # run_recipe passes, so every variant finds the arrays ready (and the first one is not charged for decoding).
    first = build_recipe(args, *common.parse_variant(variants[0])[:2], False)
    start = time.perf_counter()
    train_ds, test_ds = load_datasets(args.data, root=args.root, train_limit=first.train_limit,
                                      test_limit=first.test_limit, seed=first.seed, num_classes=first.num_classes)
    decode_s = time.perf_counter() - start
    note(f"data {args.data}: {len(train_ds)} train / {len(test_ds)} test images ready in {decode_s:.1f}s; "
         f"device {env['device']}; variants {', '.join(variants)}")
    del train_ds, test_ds
    setup_s = time.perf_counter() - main_start
    extra = {"decode_s": decode_s, "cuda_init_s": cuda_init, "process_start_s": process_start_s,
             "setup_s": setup_s, "wall_s_total_from": "process start" if process_start_s is not None else "main()"}
    before_s = setup_s + (process_start_s or 0.0)

    records = []
    shared_lrs: Optional[Dict[str, Any]] = None
    for name in variants:
        note(f"variant {name} ...")
        try:
            record = run_variant(name, args, device, env, extra, shared_lrs=shared_lrs, before_s=before_s)
            if args.shared_lr and shared_lrs is None and record["lr_source"] == "lr_finder" \
                    and record["lr_max"] is not None:
                shared_lrs = {"lr_max": record["lr_max"], "lr_min": record["lr_min"], "variant": name}
        except Exception as exc:  # keep the other variants' numbers: a run on a lent GPU is not cheap to repeat
            traceback.print_exc(file=sys.stderr)
            record = {"bench": BENCH, "variant": name, **env, "data": common.data_label(args.data),
                      "data_arg": args.data, "error": f"{type(exc).__name__}: {exc}", **extra}
            common.release_memory(device)
        records.append(emit(record, args.out))
    return records


if __name__ == "__main__":
    sys.exit(1 if any("error" in r for r in main()) else 0)
