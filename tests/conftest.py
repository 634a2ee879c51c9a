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
