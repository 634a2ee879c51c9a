"""Parameters and multiply-accumulates (MACs) of every registered model, per image and per CIFAR epoch.

Counted with ``pytorch_utils.models.model_cost`` (torch's ``FlopCounterMode``; FLOPs / 2) on the meta device, so it
runs on any CPU in seconds and allocates no weights. A training epoch is counted as 3 forward passes per image
(forward + backward) over 50,000 images. These are arithmetic costs, not seconds: wall time also depends on the GPU,
the data path and the precision (see bench_wrn_throughput.py for measured images/s).

Usage:
    python benchmarks/model_costs.py                       # every model, 10 and 100 classes
    python benchmarks/model_costs.py --models s8_resnet wrn28_10 --num-classes 100
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):  # run as a script: make the checkout's pytorch_utils importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pytorch_utils.models import create_model, list_models, model_cost  # noqa: E402


def cost_rows(models: List[str], num_classes: List[int], input_size=(3, 32, 32), images: int = 50_000) -> List[dict]:
    """One dict per (model, class count): params, MACs per image, training MACs per epoch of ``images`` images."""
    rows = []
    for name in models:
        for classes in num_classes:
            with torch.device("meta"):  # shapes only: no 36M-parameter allocation, no compute
                model = create_model(name, num_classes=classes)
            cost = model_cost(model, input_size)
            rows.append({"model": name, "classes": classes, "params": cost.params, "macs": cost.macs,
                         "train_macs_per_epoch": cost.epoch_macs(images)})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--num-classes", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--images", type=int, default=50_000, help="images per epoch (CIFAR: 50,000)")
    args = parser.parse_args(argv)
    print(f"{'model':<14} {'classes':>7} {'params':>12} {'MACs/image':>12} {'train MACs/epoch':>17}")
    for r in cost_rows(args.models, args.num_classes, images=args.images):
        print(f"{r['model']:<14} {r['classes']:>7} {r['params']:>12,} {r['macs'] / 1e9:>11.3f}G "
              f"{r['train_macs_per_epoch'] / 1e15:>16.3f}P")
    return 0


if __name__ == "__main__":
    sys.exit(main())
