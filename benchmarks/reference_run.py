"""A real, measured run of one recipe that also writes the plots the README shows (assets/<name>/).

Prints one JSON line (same keys as the other benchmarks) with the data, device, epochs, wall seconds and test
accuracy, and writes the full report (curves, misclassified, confusion matrix, per-class accuracy, GradCAM) with
``pytorch_utils.viz.report``, titled with the recipe, the data ("JPEG CIFAR-10 copy" for the zip), the device and
the epochs. The same facts, with the command line, the git commit and the torch version, go to ``<assets>/run.json``.
Example (what produced assets/strixbee_l1_cpu/ on a 2-core CPU):

    python -m benchmarks.reference_run --recipe strixbee_l1 --data ../shared/data/cifar10-jpeg.zip --epochs 15 \\
        --assets assets/strixbee_l1_cpu --out-dir runs/strixbee_l1_cpu

A run that was cut off continues from its newest checkpoint: the same command with ``--resume`` added.

CPU smoke run (a few seconds):

    python benchmarks/reference_run.py --recipe strixbee_l1 --data synthetic --epochs 1 --train-limit 64 \\
        --test-limit 32 --set batch_size=16 --assets /tmp/ref_assets --out-dir /tmp/ref_run
"""
import argparse
import contextlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):  # run as a script: make `benchmarks` and the checkout's pytorch_utils importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    data_description,
    data_label,
    device_name,
    emit,
    environment,
    log_package_to_stderr,
    shortened,
)


def report_title(recipe_name: str, data: str, device: str, epochs: int) -> str:
    """The report's heading: what ran, on which data, where, for how long."""
    return f"{recipe_name}: {data_description(data)}, {epochs} epoch{'s' if epochs != 1 else ''}, {device}"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the recipe, write the report and ``<assets>/run.json``, print the JSON line; returns the exit code."""
    from pytorch_utils import viz
    from pytorch_utils.recipes import get_recipe, report_data, run_recipe
    from pytorch_utils.recipes.base import parse_override

    command = shlex.join([sys.executable, *sys.argv] if argv is None
                         else [sys.executable, "-m", "benchmarks.reference_run", *argv])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True)
    p.add_argument("--data", default=None, help="synthetic | cifar10 | cifar100 | folder/zip path")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--assets", required=True, help="folder for the report PNGs, index.md and run.json")
    p.add_argument("--out-dir", default=None, help="run folder (history, checkpoints)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    p.add_argument("--resume", action="store_true",
                   help="continue the cut-off run in --out-dir from its newest checkpoint (same arguments otherwise)")
    args = p.parse_args(argv)

    recipe = get_recipe(args.recipe)
    recipe = recipe.replace(**{k: v for k, v in (("train_limit", args.train_limit), ("test_limit", args.test_limit))
                               if v is not None})
    if args.epochs is not None:
        recipe = shortened(recipe, args.epochs)  # fewer epochs than the recipe's: its epoch counts scaled
    overrides = {}
    for item in args.set:
        overrides.update(parse_override(recipe, item))
    recipe = recipe.replace(**overrides)
    data = str(args.data or recipe.data)
    start = time.perf_counter()
    log_package_to_stderr()  # progress on stderr: stdout holds the JSON line
    with contextlib.redirect_stdout(sys.stderr):  # torch-lr-finder prints a line of its own
        result = run_recipe(recipe, data=args.data, out_dir=args.out_dir, device=args.device, progress=False,
                            resume="required" if args.resume else False)
    wall = time.perf_counter() - start
    device = device_name(result.device)
    title = report_title(recipe.name, data, device, len(result.history))
    start = time.perf_counter()
    paths = viz.report(report_data(result, model=result.model), args.assets, title=title)
    report_s = time.perf_counter() - start
    epochs = sum(r["seconds"] for r in result.history)
    run_json = Path(args.assets) / "run.json"
    record = emit({
        "bench": "reference_run", "variant": recipe.name, "device": device, "data": data_label(data),
        "epochs": len(result.history), "resumed": args.resume, "wall_s": wall, "wall_s_without_startup": epochs,
        "startup_s": None if args.resume else wall - epochs,  # a resumed run's wall time covers only its last part
        "test_acc": result.final["test_acc"], "best_test_acc": result.final["best_test_acc"],
        "train_acc": result.final["train_acc"], "report_s": report_s, "data_description": data_description(data),
        "data_arg": data, "title": title, "recipe": recipe.name, "model": recipe.model,
        "train_images": len(result.train_loader.dataset), "test_images": len(result.test_loader.dataset),
        "train_limit": recipe.train_limit, "test_limit": recipe.test_limit, "batch_size": recipe.batch_size,
        "command": command, "assets": {k: str(v) for k, v in paths.items()}, "run_json": str(run_json),
        **environment(result.device)}, out=args.out)
    # The facts beside the plots (environment() added the device, git commit and torch version).
    run_json.write_text(json.dumps({**record, "recipe_fields": recipe.to_dict()}, indent=2) + "\n",
                        encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
