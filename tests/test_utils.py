import random

import numpy as np
import pytest
import torch

from pytorch_utils.errors import ConfigError
from pytorch_utils.utils import amp_dtype_for, resolve_device, seed_everything


def test_amp_auto_is_fp32_on_cpu_and_explicit_options_map():
    cpu = torch.device("cpu")
    assert amp_dtype_for("auto", cpu) is None
    assert amp_dtype_for(None, cpu) is None and amp_dtype_for("none", cpu) is None
    assert amp_dtype_for("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16"):
        amp_dtype_for("fp16", cpu)
    with pytest.raises(ConfigError, match="unknown amp option"):
        amp_dtype_for("int8", cpu)


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_amp_auto_on_cuda_uses_native_bf16_only(monkeypatch, native_bf16, expected):
    # A T4 (compute capability 7.5) reports bf16 as supported through emulation, but cuDNN has no bf16 convolutions
    # there: "auto" must ask for native support and fall back to fp16.
    calls = []

    def fake_supported(including_emulation=True):
        calls.append(including_emulation)
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake_supported)
    assert amp_dtype_for("auto", torch.device("cuda")) is expected
    assert calls == [False]


def test_resolve_device_falls_back_or_raises_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="no CUDA"):
        assert resolve_device("cuda").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_device("cuda", fallback=False)


@pytest.mark.parametrize("device", ["foo", "cuda:abc", "cuda:-1", 3.5, "meta", "xla"])
def test_resolve_device_rejects_unparseable_devices_with_the_valid_forms(device):
    with pytest.raises(ConfigError) as info:
        resolve_device(device)
    msg = str(info.value)
    assert repr(device) in msg and all(f"'{form}'" in msg for form in ("auto", "cpu", "cuda", "cuda:0", "mps"))


def test_seed_everything_refuses_seeds_numpy_cannot_take_and_reproduces_within_its_range():
    for seed in (-1, 2**32, 2**70):
        with pytest.raises(ConfigError, match=r"seed must be an integer from 0 to 2\*\*32 - 1"):
            seed_everything(seed)
    draws = []
    for _ in range(2):
        assert seed_everything(2**32 - 1) == 2**32 - 1
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
