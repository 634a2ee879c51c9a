"""Training throughput (images/s) of WRN-28-10 on both data paths, side by side in one process.

Variants (``--variants``): ``fast`` (GPULoader: data set on the device, batched augmentation there), ``fast-compile``,
``dataloader-<N>w`` (albumentations in N DataLoader workers). Each variant builds the model and the loader, runs
``--warmup`` training steps (cuDNN/cuBLAS autotuning, worker start-up, torch.compile), then times ``--steps`` steps
between two ``cuda.synchronize()`` calls. The steps are the package's own ``train_one_epoch`` (the engine a recipe
uses: autocast bf16 on CUDA, channels_last on CUDA, the WRN recipe's SGD), run on a loader cut to the step count.
As in a recipe run: cuDNN autotuning is on for CUDA (``--no-cudnn-benchmark`` turns it off), and the fast variants'
GPULoader hands out bf16 batches when the amp option resolves to bf16 (fp32 otherwise); both are in the record
(``cudnn_benchmark``, ``cudnn_benchmark_option``, ``loader_dtype``).

Record fields: images_per_s = steps x batch / timed seconds; wall_s = model build + loader build (upload) + warm-up
+ timed steps; wall_s_without_startup = the timed steps; startup_s = the rest; compile_warmup_s = the warm-up of a
compiled variant. ``epochs`` and ``test_acc`` are null (no evaluation; ``epochs_equivalent`` says how much data
the timed steps saw).

Usage:
    python benchmarks/bench_wrn_throughput.py --data ../shared/data/cifar10-jpeg.zip
    python benchmarks/bench_wrn_throughput.py --model wrn16_2 --steps 3 --warmup 1 --batch-size 16   # CPU smoke run
"""
import argparse
import copy
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

if __package__ in (None, ""):  # run as a script: make `benchmarks` and the checkout's pytorch_utils importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import clock, emit, note  # noqa: E402

BENCH = "wrn_throughput"
DEFAULT_VARIANTS = "fast,dataloader-2w,dataloader-8w"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, epochs=None, batch_size=128, variants=DEFAULT_VARIANTS, cudnn_toggle=True)
    parser.add_argument("--model", default="wrn28_10", help="registered model (default %(default)s)")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before them (default %(default)s)")
    parser.add_argument("--augmentation", default="standard",
                        help="augmentation preset on both paths: standard (pad-crop-flip-cutout) or wrn "
                             "(resized crop, rotation, flip, cutout) (default %(default)s)")
    parser.add_argument("--amp", default="auto", help="auto (bf16 on CUDA) | bf16 | fp16 | none (default %(default)s)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW on CUDA")
    parser.add_argument("--mix", action="store_true",
                        help="also apply the WRN recipe's MixUp/CutMix + label smoothing 0.2 (soft-target loss)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.amp == "none":
        args.amp = None
    return args


class StepLoader:
    """The next ``steps`` batches of ``loader`` per iteration, continuing where the previous iteration stopped.

    One underlying iterator is kept across iterations (so the DataLoader's workers started in the warm-up keep
    running into the timed steps); when the loader runs out, the next epoch starts (``set_loader_epoch``).
    """

    def __init__(self, loader):
        self.loader = loader
        self.steps = 0
        self.epoch = 0
        self._it: Optional[Iterator] = None

    def take(self, steps: int) -> "StepLoader":
        """Make the next iteration yield ``steps`` batches; returns self."""
        self.steps = int(steps)
        return self

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        from pytorch_utils.data import set_loader_epoch

        for _ in range(self.steps):
            batch = next(self._it, None) if self._it is not None else None
            if batch is None:
                set_loader_epoch(self.loader, self.epoch)
                self.epoch += 1
                self._it = iter(self.loader)
                batch = next(self._it)
            yield batch

    def close(self) -> None:
        """Drop the iterator (shuts a DataLoader's workers down)."""
        self._it = None


def loader_dtype(loader: str, amp_dtype):
    """The dtype of the batches a variant's loader hands out: bf16 from the GPULoader under bf16 autocast (what
    ``run_recipe``'s ``_make_loaders`` does: the first conv would cast to bf16 anyway), else float32."""
    import torch

    return torch.bfloat16 if loader == "gpu" and amp_dtype == torch.bfloat16 else torch.float32


def build_loader(train_ds, loader: str, workers: Optional[int], args: argparse.Namespace, device,
                 channels_last: bool, dtype=None):
    """The training loader of one variant over ``train_ds`` (not modified: the DataLoader path gets a copy).

    ``dtype``: the GPULoader's batch dtype (default float32); the DataLoader path always yields float32.
    """
    import torch

    from pytorch_utils.data import get_preset, make_loader
    from pytorch_utils.data.gpu import GPULoader

    if loader == "gpu":
        gpu = GPULoader(train_ds, batch_size=args.batch_size, train=True, device=device, seed=args.seed,
                        channels_last=channels_last, dtype=dtype or torch.float32)
        gpu.set_augmentation(args.augmentation)
        return gpu
    ds = copy.copy(train_ds)
    ds.transform = get_preset(args.augmentation, train_ds.mean, train_ds.std, seed=args.seed)
    return make_loader(ds, args.batch_size, train=True, num_workers=workers, seed=args.seed)


def run_variant(name: str, train_ds, args: argparse.Namespace, device, env: Dict[str, Any],
                extra: Dict[str, Any]) -> Dict[str, Any]:
    """Warm up, then time ``args.steps`` training steps of variant ``name``; returns its record."""
    import torch
    import torch.nn as nn

    from pytorch_utils.models import count_parameters, create_model
    from pytorch_utils.recipes import get_recipe
    from pytorch_utils.recipes.base import build_optimizer
    from pytorch_utils.train import TrainConfig, train_one_epoch
    from pytorch_utils.train.mixing import Mixer, SoftTargetCrossEntropy
    from pytorch_utils.utils import amp_dtype_for, seed_everything

    loader_kind, workers, compile_ = common.parse_variant(name)
    compile_ = compile_ or (args.compile and name == "fast")
    channels_last = device.type == "cuda" and not args.no_channels_last
    amp_dtype = amp_dtype_for(args.amp, device)
    batch_dtype = loader_dtype(loader_kind, amp_dtype)
    seed_everything(args.seed)
    common.release_memory(device)
    common.reset_peak_memory(device)

    start = clock(device)
    model = create_model(args.model, num_classes=train_ds.num_classes)
    params = count_parameters(model)
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    optimizer = build_optimizer(get_recipe("wrn_c10"), model)  # SGD 0.1, momentum 0.9, nesterov, wd 5e-4
    if args.mix:
        recipe = get_recipe("wrn_c10")
        mixer = Mixer(train_ds.num_classes, mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha,
                      switch_prob=recipe.mix_switch_prob, label_smoothing=recipe.label_smoothing)
        criterion = SoftTargetCrossEntropy()
    else:
        mixer, criterion = None, nn.CrossEntropyLoss()
    train_model = torch.compile(model) if compile_ else model
    with_timing: Dict[str, float] = {}
    with common.timed(device, with_timing, "loader_s"):
        loader = build_loader(train_ds, loader_kind, workers, args, device, channels_last, batch_dtype)
    steps = StepLoader(loader)
    config = TrainConfig(amp={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype), mixer=mixer,
                         channels_last=channels_last, progress=False)
    try:
        warmup_s = 0.0
        if args.warmup:
            t = clock(device)
            train_one_epoch(train_model, steps.take(args.warmup), optimizer, criterion, config)
            warmup_s = clock(device) - t
        t = clock(device)
        stats = train_one_epoch(train_model, steps.take(args.steps), optimizer, criterion, config)
        timed_s = clock(device) - t
    finally:
        steps.close()
    wall = clock(device) - start
    images = args.steps * args.batch_size
    record: Dict[str, Any] = {
        "bench": BENCH, "variant": name, **env, "data": common.data_label(args.data), "data_arg": args.data,
        "epochs": None, "wall_s": wall, "wall_s_without_startup": timed_s, "startup_s": wall - timed_s,
        "test_acc": None, "images_per_s": images / timed_s, "step_ms": 1000 * timed_s / args.steps,
        "steps": args.steps, "warmup_steps": args.warmup, "warmup_s": warmup_s,
        "compile_warmup_s": warmup_s if compile_ else None, "loader_s": with_timing["loader_s"], **extra,
        "train_loss": stats["loss"], "train_acc": stats["acc"],
        "epochs_equivalent": images / len(train_ds), "train_images": len(train_ds),
        "model": args.model, "parameters": params, "batch_size": args.batch_size,
        "loader": loader_kind, "num_workers": workers, "compile": compile_, "amp": common.amp_label(amp_dtype),
        "loader_dtype": common.amp_label(batch_dtype),
        "channels_last": channels_last, "augmentation": args.augmentation, "mix": bool(args.mix),
        "peak_memory_gib": common.peak_memory_gib(device), "seed": args.seed,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark), "cudnn_benchmark_option": args.cudnn_option,
    }
    del model, train_model, optimizer, loader, steps
    common.release_memory(device)
    return record


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Run the chosen variants one after the other; print (and return) one JSON record per variant.

    A variant that raises gets a record with an ``error`` field and the others still run.
    """
    import torch

    args = parse_args(argv)
    variants = common.split_variants(args.variants)
    device = common.resolve_bench_device(args.device)
    cudnn_before = torch.backends.cudnn.benchmark
    try:
        # On by default on CUDA, as fit() does for every recipe run; the measured steps follow the warm-up, so the
        # autotuning itself falls in the warm-up steps.
        args.cudnn_option = common.apply_cudnn_benchmark(args.cudnn_benchmark, device)
        return _run(args, variants, device)
    finally:
        torch.backends.cudnn.benchmark = cudnn_before  # leave the process as found (the tests call main())


def _run(args: argparse.Namespace, variants: List[str], device) -> List[Dict[str, Any]]:
    from pytorch_utils.data import load_datasets

    cuda_init = common.init_device(device)
    env = common.environment(device)

    start = time.perf_counter()
    train_ds, _ = load_datasets(args.data, root=args.root, train_limit=args.train_limit,
                                test_limit=args.test_limit or 10, seed=args.seed)
    decode_s = time.perf_counter() - start
    note(f"data {args.data}: {len(train_ds)} train images ready in {decode_s:.1f}s; device {env['device']}; "
         f"model {args.model}, batch {args.batch_size}, {args.warmup} + {args.steps} steps; "
         f"variants {', '.join(variants)}")
    extra = {"decode_s": decode_s, "cuda_init_s": cuda_init}

    records = []
    for name in variants:
        note(f"variant {name} ...")
        try:
            record = run_variant(name, train_ds, args, device, env, extra)
        except Exception as exc:  # keep the other variants' numbers
            traceback.print_exc(file=sys.stderr)
            record = {"bench": BENCH, "variant": name, **env, "data": common.data_label(args.data),
                      "data_arg": args.data, "model": args.model, "error": f"{type(exc).__name__}: {exc}", **extra}
            common.release_memory(device)
        records.append(emit(record, args.out))
    return records


if __name__ == "__main__":
    sys.exit(1 if any("error" in r for r in main()) else 0)
