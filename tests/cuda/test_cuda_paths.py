"""The package's GPU paths on a real CUDA device: autocast (bf16; fp16 with GradScaler), channels_last, the
GPU-resident loader, compiled vs eager training, EMA, TTA and the LR finder under autocast.

Every run goes through ``run_recipe`` on a small synthetic set (seconds on a GPU), so a dtype or device fault that
only CUDA shows fails here, before a student meets it in a notebook. Stage a of ``benchmarks/device/check.py``.
"""
import math

import pytest
import torch

from pytorch_utils.recipes import run_recipe
from pytorch_utils.train.loop import evaluate

SMALL = dict(data="synthetic", model="strixbee_l1", model_kwargs={}, train_limit=512, test_limit=256,
             batch_size=64, progress=False)


def _run(tmp_path_factory, device, recipe="s10", **overrides):
    out_dir = tmp_path_factory.mktemp("cuda_run")
    return run_recipe(recipe, out_dir=out_dir, device=device, **dict(SMALL, **overrides))


def _cuda_only(device):
    if device.type != "cuda":
        pytest.skip("CUDA-only assertion (CPU dry run)")


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, device):
    """S10 recipe (LR finder, flip TTA) under bf16 autocast on the GPU loader, with EMA and channels_last."""
    return _run(tmp_path_factory, device, amp="bf16", loader="gpu", channels_last=True, ema_decay=0.9, epochs=1)


def _first_batch(loader):
    return next(iter(loader))


def test_bf16_autocast_trains_with_finite_losses(bf16_run, device):
    record = bf16_run.history[-1]
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["test_loss"])
    assert 0.0 <= record["test_acc"] <= 100.0
    assert all(p.dtype == torch.float32 for p in bf16_run.model.parameters())  # autocast, not a bf16 model
    assert next(bf16_run.model.parameters()).device.type == device.type


def test_gpu_loader_batches_live_on_the_device(bf16_run, device):
    inputs, targets = _first_batch(bf16_run.train_loader)
    assert inputs.device.type == device.type and targets.device.type == device.type
    assert inputs.shape[1:] == (3, 32, 32) and inputs.shape[0] == SMALL["batch_size"]
    assert inputs.dtype in (torch.bfloat16, torch.float32) and targets.dtype == torch.int64
    assert torch.isfinite(inputs.float()).all()
    # normalized, not raw 0-255 pixels
    assert inputs.float().abs().max() < 10
    assert sum(1 for _ in bf16_run.train_loader) == len(bf16_run.train_loader)


def test_channels_last_model_and_batches(bf16_run, device):
    _cuda_only(device)
    conv = next(m for m in bf16_run.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    inputs, _ = _first_batch(bf16_run.train_loader)
    assert inputs.is_contiguous(memory_format=torch.channels_last)


def test_lr_finder_under_autocast(bf16_run):
    finder = bf16_run.lr_finder
    assert finder is not None
    assert math.isfinite(finder.lr_max) and finder.lr_max > 0
    assert finder.lr_min == pytest.approx(finder.lr_max / 10)


def test_ema_copy_is_separate_and_evaluated(bf16_run, device):
    ema, model = bf16_run.eval_model, bf16_run.model
    assert ema is not model
    assert next(ema.parameters()).device.type == device.type
    diffs = [(a - b).abs().max().item() for a, b in zip(ema.state_dict().values(), model.state_dict().values())
             if a.is_floating_point()]
    assert max(diffs) > 0  # the EMA lags the trained weights


@pytest.mark.parametrize("tta", ["flip", "flip_translate"])
def test_tta_on_device_keeps_the_model(bf16_run, device, tta):
    model = bf16_run.eval_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    amp = "bf16" if device.type == "cuda" else None
    plain = evaluate(model, bf16_run.test_loader, device=device, amp=amp, tta=None)
    with_tta = evaluate(model, bf16_run.test_loader, device=device, amp=amp, tta=tta)
    assert with_tta["samples"] == plain["samples"] == SMALL["test_limit"]
    assert 0.0 <= with_tta["acc"] <= 100.0 and math.isfinite(with_tta["loss"])
    assert model.training  # evaluate puts the mode back
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_fp16_autocast_with_grad_scaler(tmp_path_factory, device):
    _cuda_only(device)  # fp16 autocast needs a GradScaler, which only CUDA has
    result = _run(tmp_path_factory, device, "default", amp="fp16", loader="gpu", tta=None, epochs=2)
    losses = [r["train_loss"] for r in result.history]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


def test_compiled_and_eager_train_the_same_way(tmp_path_factory, device):
    """Same seed, same data: compiled and eager training must follow the same curve (fp32, so only kernel-level
    rounding differs). A difference such as a BatchNorm warm-up skipped for compiled models shows up here."""
    common = dict(amp=None, loader="gpu", lr_finder=None, tta=None, epochs=2, seed=0)
    eager = _run(tmp_path_factory, device, "default", compile=False, **common)
    compiled = _run(tmp_path_factory, device, "default", compile=True, **common)
    for e, c in zip(eager.history, compiled.history):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=0.05), (e, c)
        assert abs(c["test_acc"] - e["test_acc"]) <= 5.0, (e, c)
