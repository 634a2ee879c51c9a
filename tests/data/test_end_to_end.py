"""Data as students bring it, through the CLI and run_recipe: grayscale 28x28 sets, 64x64 sets, one input size."""
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from pytorch_utils.cli import main


def gray_set(root, side=28, per_class=(24, 8), classes=("boot", "shirt", "sneaker")):
    """A Fashion-MNIST-style tree: grayscale PNGs in train|test/<class>/, one brightness band per class."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for label, cname in enumerate(classes):
            (root / split / cname).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (side, side)) + 90 * label
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cname / f"{i}.png")
    return root


@pytest.mark.parametrize("model", ["wrn16_2", "strixbee_l1"])
def test_fashion_mnist_style_set_trains_through_the_cli(tmp_path, capsys, caplog, model):
    data = gray_set(tmp_path / "fashion", per_class=(8, 4))
    with caplog.at_level(logging.INFO, logger="pytorch_utils"):
        code = main(["train", "--model", model, "--data", str(data), "--epochs", "1", "--batch-size", "8",
                     "--lr", "0.01", "--num-workers", "0", "--out-dir", str(tmp_path / "run"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "24 train / 12 test, 3 classes" in out
    assert any(r.getMessage().startswith("converted 24 of 24 images") for r in caplog.records)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["test_loss"])


@pytest.mark.parametrize("loader", ["dataloader", "gpu"])
def test_train_and_test_batches_have_the_declared_size_on_both_loaders(loader):
    # The runner's loader set-up: both loaders at the decided size, the phases' size switch moves training only.
    from pytorch_utils.data.synthetic import make_synthetic
    from pytorch_utils.recipes import get_recipe
    from pytorch_utils.recipes.runner import _make_loaders

    train_ds, test_ds = make_synthetic(32, size=24, seed=0), make_synthetic(16, size=24, seed=1)
    recipe = get_recipe("wrn_c10").replace(batch_size=8, num_workers=0, loader=loader)
    train, test, kind = _make_loaders(recipe, train_ds, test_ds, torch.device("cpu"), 0, 1, 32)
    assert kind == loader
    assert next(iter(train))[0].shape[-2:] == next(iter(test))[0].shape[-2:] == (32, 32)
    train.set_augmentation("wrn", size=40)  # progressive resizing: what a phase does
    assert next(iter(train))[0].shape[-2:] == (40, 40) and next(iter(test))[0].shape[-2:] == (32, 32)


def test_s10_resnet_on_64px_images_is_resized_before_any_training(tmp_path, capsys, caplog):
    data = gray_set(tmp_path / "big", side=64, per_class=(4, 2), classes=("a", "b"))
    with caplog.at_level(logging.INFO, logger="pytorch_utils.data.input_size"):
        code = main(["train", "--model", "s10_resnet", "--data", str(data), "--epochs", "1", "--batch-size", "4",
                     "--lr", "0.001", "--num-workers", "0", "--out-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 0, capsys.readouterr().out
    notes = [r.getMessage() for r in caplog.records if "training and evaluating at" in r.getMessage()]
    assert len(notes) == 1 and "64x64" in notes[0] and "32x32" in notes[0]
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["test_loss"])
