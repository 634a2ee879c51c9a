"""The train/test gap of a finished run, both splits measured the same way.

The train accuracy a run records is the running mean over its last epoch, in train mode: on augmented images, with
dropout on and BatchNorm using batch statistics, while the weights still change. Against the test accuracy (eval mode,
plain images) it over- or understates the gap, most at Strixbee level 3 (augmentation + dropout). This script loads
the run's last (or best) checkpoint and evaluates it in eval mode on the plain training and test images, normalized as
in training, and prints one JSON line (data, device, seconds, both accuracies and losses, the gap in points):

    python benchmarks/fit_gap.py --run runs/strixbee_l3_cpu --data ../shared/data/cifar10-jpeg.zip
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
    import torch

    from pytorch_utils.data import load_datasets, make_loader
    from pytorch_utils.inference import load_run
    from pytorch_utils.train.loop import evaluate
    from pytorch_utils.viz.report import _DATA_FIELDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (out_dir of the run)")
    p.add_argument("--data", required=True, help="the data set the run was trained on: synthetic | cifar10 | path")
    p.add_argument("--which", choices=("last", "best"), default="last", help="checkpoint (default: last)")
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = p.parse_args(argv)

    log_package_to_stderr()
    start = time.perf_counter()
    device = torch.device("cpu")  # load_run's default
    run = load_run(args.run, which=args.which, device=device)
    splits = load_datasets(args.data, **{k: run.recipe[k] for k in _DATA_FIELDS if k in run.recipe})
    measured = {}
    for name, ds in zip(("train", "test"), splits):
        ds.mean, ds.std = run.mean, run.std  # normalized exactly as in training
        loader = make_loader(ds, batch_size=256, train=False, num_workers=0)
        loader.set_augmentation("test", size=run.input_size[0])
        measured[name] = evaluate(run.model, loader)
    emit({
        "bench": "fit_gap", "variant": run.recipe.get("name"), "data": data_label(args.data), "epochs": None,
        "wall_s": time.perf_counter() - start, "test_acc": measured["test"]["acc"],
        "train_acc_eval": measured["train"]["acc"], "gap_points": measured["train"]["acc"] - measured["test"]["acc"],
        "train_loss_eval": measured["train"]["loss"], "test_loss": measured["test"]["loss"],
        "train_images": measured["train"]["samples"], "test_images": measured["test"]["samples"],
        "checkpoint": str(run.source), "data_description": data_description(args.data),
        "eval_seconds": {k: v["seconds"] for k, v in measured.items()}, **environment(device)}, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
