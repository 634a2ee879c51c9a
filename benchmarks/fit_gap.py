"""The train/test gap of a finished run, both splits measured the same way.

The train accuracy a run records is the running mean over each epoch in train mode (BatchNorm on batch statistics,
dropout and the recipe's augmentation on, where it has them) while the weights still change; the test accuracy is
taken in eval mode on plain images. So the recorded gap over- or understates the real one, most for a recipe with
augmentation and dropout (Strixbee level 3). This script loads the run folder's last (or best, chosen on the test
set) checkpoint, EMA weights where the run kept them, and evaluates it as the run evaluated its test set (eval mode,
no augmentation, the run's normalization, data limits, seed and TTA) on the training and the test images. It prints
one JSON line: data, device, seconds, both accuracies (percent) and losses, the gap in points. Evaluation runs in
float32, so the test figures repeat the run's own for that checkpoint exactly when it was evaluated in float32 (on the
CPU), within rounding after bf16/fp16 on a GPU:

    python benchmarks/fit_gap.py --run runs/strixbee_l3_cpu --data ../shared/data/cifar10-jpeg.zip

``--data`` defaults to the data named in the run's run.json. Raises the package's errors for a run folder without a
checkpoint, a file (an export has no data record) or data whose classes differ from the run's.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):  # run as a script: make `benchmarks` and the checkout's pytorch_utils importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import data_description, data_label, emit, environment, log_package_to_stderr  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    """Evaluate the run on both splits, print the JSON line; returns the exit code."""
    from pytorch_utils.data import load_datasets
    from pytorch_utils.errors import ConfigError, DatasetError
    from pytorch_utils.inference import load_run
    from pytorch_utils.train.loop import evaluate
    from pytorch_utils.utils import resolve_device
    from pytorch_utils.viz.report import _DATA_FIELDS, _recorded_data, eval_loader

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (out_dir of the run)")
    p.add_argument("--data", default=None, help="the run's data set (default: run.json's): cifar10 | path | ...")
    p.add_argument("--root", default="./data", help="torchvision CIFAR folder (for --data cifar10/cifar100)")
    p.add_argument("--which", choices=("last", "best"), default="last", help="checkpoint (default: last)")
    p.add_argument("--device", default="cpu", help="cpu | auto | cuda | cuda:N (default %(default)s)")
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = p.parse_args(argv)

    log_package_to_stderr()
    run_dir, start = Path(args.run), time.perf_counter()
    if run_dir.is_file():
        raise ConfigError(f"{args.run!r} is a file: fit_gap needs the run folder (an export has no data record)")
    device = resolve_device(args.device)
    run = load_run(run_dir, which=args.which, device=device)
    data = args.data or _recorded_data(run_dir) or run.recipe.get("data")
    splits = load_datasets(data, root=args.root, **{k: run.recipe[k] for k in _DATA_FIELDS if k in run.recipe})
    if list(splits[0].classes) != run.classes:
        raise DatasetError(f"{data!r} has other classes than the run {args.run!r}: pass the data it was trained on")
    measured = {}
    for name, ds in zip(("train", "test"), splits):
        measured[name] = evaluate(run.model, eval_loader(run, ds), tta=run.recipe.get("tta"))
    train, test = measured["train"], measured["test"]
    emit({
        "bench": "fit_gap", "variant": run.recipe.get("name"), "data": data_label(str(data)), "epochs": None,
        "wall_s": time.perf_counter() - start, "test_acc": test["acc"], "train_acc_eval": train["acc"],
        "gap_points": train["acc"] - test["acc"], "train_loss_eval": train["loss"], "test_loss": test["loss"],
        "train_images": train["samples"], "test_images": test["samples"], "checkpoint": str(run.source),
        "weights": run.weights, "tta": run.recipe.get("tta"), "data_description": data_description(str(data)),
        "eval_seconds": {"train": train["seconds"], "test": test["seconds"]}, **environment(device)}, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
