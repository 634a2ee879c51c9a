"""Trains a small BN-free CNN for 2 epochs with the package engine; run plain (1 process) or under torchrun.

Usage: python _ddp_worker.py OUT.json [global_batch]. Rank 0 writes the history and the final weights' values.
Each rank gets global_batch / world_size samples per step from the same (seed, epoch) permutation, so one process
with the global batch sees exactly the same samples per step as the ranks together.
"""
import json
import sys

import torch
import torch.nn as nn

from pytorch_utils.data import get_preset, load_datasets, make_loader
from pytorch_utils.train import TrainConfig, fit
from pytorch_utils.train.distributed import cleanup_distributed, init_distributed
from pytorch_utils.utils import seed_everything


def main(out_path: str, global_batch: int = 32) -> None:
    rank, world, device = init_distributed(backend="gloo")
    torch.set_num_threads(1)
    seed_everything(0)
    train, test = load_datasets("synthetic", train_limit=256, test_limit=128, num_classes=4, seed=0)
    train.transform = get_preset("test", train.mean, train.std)
    test.transform = get_preset("test", train.mean, train.std)
    train_loader = make_loader(train, global_batch // world, train=True, num_workers=0, seed=0,
                               num_replicas=world, rank=rank)
    test_loader = make_loader(test, 64 // world, train=False, num_workers=0, seed=0, num_replicas=world, rank=rank)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    plain = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = fit(model, train_loader, test_loader, epochs=2, optimizer=opt,
                  config=TrainConfig(device="cpu", progress=False))
    if rank == 0:
        weights = {k: v.flatten().tolist() for k, v in plain.state_dict().items()}
        with open(out_path, "w") as fh:
            json.dump({"world": world, "history": list(history), "weights": weights}, fh)
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 32)
