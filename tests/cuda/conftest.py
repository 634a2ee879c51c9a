"""CUDA-only tests: the GPU paths of the package, run by stage a of ``benchmarks/device/check.py``.

Skipped where there is no CUDA device. ``PYTORCH_UTILS_CUDA_TESTS_ON_CPU=1`` runs them on the CPU instead (a dry
run of the test code itself while no GPU is at hand; the CUDA-only assertions are then skipped one by one).
"""
import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("PYTORCH_UTILS_CUDA_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("no CUDA device (set PYTORCH_UTILS_CUDA_TESTS_ON_CPU=1 for a CPU dry run)")
