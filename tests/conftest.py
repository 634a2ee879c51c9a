"""Shared fixtures: headless matplotlib, few CPU threads, paths to the shared real-image zip."""
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no window ever opens in tests

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import _helpers`
CIFAR_ZIP = REPO.parent / "shared" / "data" / "cifar10-jpeg.zip"


@pytest.fixture
def cifar_zip():
    """Path to the JPEG CIFAR-10 zip beside the repo; skips the test when the file is absent."""
    if not CIFAR_ZIP.is_file():
        pytest.skip(f"{CIFAR_ZIP} not present")
    return CIFAR_ZIP


@pytest.fixture(autouse=True)
def package_logger_as_shipped():
    """Each test starts and ends with the package logger as the package sets it up; a benchmark ``main()`` run
    in-process re-routes it to stderr (its stdout holds JSON), which must not leak into later tests."""
    import logging

    logger = logging.getLogger("pytorch_utils")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished one-epoch strixbee_l1 run on 64 synthetic images (one per test module: tests may export into it)."""
    from pytorch_utils.recipes import run_recipe

    out = tmp_path_factory.mktemp("run")
    run_recipe("strixbee_l1", out_dir=out, device="cpu", data="synthetic", epochs=1, train_limit=64, test_limit=32,
               batch_size=16, num_workers=0, progress=False, lr_finder=None)
    return out
