"""Weight EMA: update arithmetic (= torch's AveragedModel), buffers, warmup, wrappers, apply_to restoration,
checkpoint round trip."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pytorch_utils.errors import CheckpointError
from pytorch_utils.train.ema import ModelEMA


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def train_step(model, seed=0):
    """Change weights (an SGD step) and BN buffers (a train-mode forward), like one optimizer step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, 6, 6, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
            p.grad = None


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_copy_is_frozen_eval_and_independent():
    model = small_net()
    ema = ModelEMA(model)
    assert not ema.module.training and all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for pe, pm in zip(ema.module.parameters(), model.parameters()):
        assert torch.equal(pe, pm) and pe.data_ptr() != pm.data_ptr()


def test_one_update_is_d_ema_plus_one_minus_d_model_and_buffers_are_copied():
    model = small_net()
    ema = ModelEMA(model, decay=0.9, warmup=False)
    before = [p.detach().clone() for p in ema.module.parameters()]
    train_step(model)
    ema.update(model)
    for pe, old, pm in zip(ema.module.parameters(), before, model.parameters()):
        assert torch.allclose(pe, 0.9 * old + 0.1 * pm.detach(), atol=1e-6)
        assert not torch.equal(pe, pm)
    for be, bm in zip(ema.module.buffers(), model.buffers()):
        assert torch.equal(be, bm)
    assert int(ema.module[1].num_batches_tracked) == 1 and ema.updates == 1


def test_warmup_ramps_the_decay():
    model = small_net()
    ema = ModelEMA(model, decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    before = [p.detach().clone() for p in ema.module.parameters()]
    train_step(model)
    ema.update(model)
    for pe, old, pm in zip(ema.module.parameters(), before, model.parameters()):
        assert torch.allclose(pe, 0.1 * old + 0.9 * pm.detach(), atol=1e-6)
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.updates = 10**6
    assert ema.current_decay() == 0.999


def test_update_unwraps_wrappers():
    model = small_net()
    ema = ModelEMA(nn.DataParallel(model), decay=0.5, warmup=False)
    assert isinstance(ema.module, nn.Sequential)
    before = [p.detach().clone() for p in ema.module.parameters()]
    train_step(model)

    class Compiled(nn.Module):  # what torch.compile returns exposes the original as _orig_mod
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    ema.update(Compiled(model))
    for pe, old, pm in zip(ema.module.parameters(), before, model.parameters()):
        assert torch.allclose(pe, 0.5 * old + 0.5 * pm.detach(), atol=1e-6)


def test_update_rejects_another_architecture():
    ema = ModelEMA(small_net())
    with pytest.raises(RuntimeError):  # torch's lerp refuses tensors of other shapes
        ema.update(nn.Linear(2, 2))


@pytest.mark.parametrize("decay", [0.9, 0.5])
def test_equals_torch_averaged_model_with_ema_avg_fn(decay):
    """Pinned to torch: AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False), whose first
    update copies the model (ours: the copy made at construction), then lerps weights and copies buffers."""
    model = small_net()
    ema = ModelEMA(model, decay=decay, warmup=False)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    reference.update_parameters(model)
    for step in range(5):
        train_step(model, seed=step)
        ema.update(model)
        reference.update_parameters(model)
    ours, torch_ema = ema.module.state_dict(), reference.module.state_dict()
    assert ours.keys() == torch_ema.keys()
    for k, v in torch_ema.items():
        torch.testing.assert_close(ours[k], v, atol=1e-6, rtol=0)  # weights and buffers (running stats, counts)


def test_copy_follows_the_model_device_and_layout():
    """fit() moves the model (device, channels_last) after a user built the EMA: the copy follows at the update."""
    model = small_net()
    ema = ModelEMA(model, decay=0.9, warmup=False)
    model.to("meta", memory_format=torch.channels_last)  # another device without allocating (shapes only)
    ema.update(model)
    weight = ema.module[0].weight
    assert weight.device.type == "meta" and weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous() and ema.updates == 1


def test_apply_to_swaps_and_restores_exactly():
    model = small_net()
    ema = ModelEMA(model, decay=0.5, warmup=False)
    for step in range(3):
        train_step(model, seed=step)
        ema.update(model)
    train_step(model, seed=9)  # buffers now differ from the EMA copy's too
    original = snapshot(model)
    param_ids = [id(p) for p in model.parameters()]
    x = torch.randn(4, 3, 6, 6)
    ema.module.eval()
    with ema.apply_to(model) as swapped:
        assert swapped is model
        for k, v in ema.module.state_dict().items():
            assert torch.equal(model.state_dict()[k], v)
        model.eval()
        assert torch.allclose(model(x), ema.module(x))
    for k, v in snapshot(model).items():
        assert torch.equal(v, original[k])
    assert [id(p) for p in model.parameters()] == param_ids  # same Parameter objects: optimizers stay valid


def test_apply_to_restores_after_an_exception():
    model = small_net()
    ema = ModelEMA(model, decay=0.5, warmup=False)
    train_step(model)
    ema.update(model)
    train_step(model, seed=1)
    original = snapshot(model)
    with pytest.raises(RuntimeError):
        with ema.apply_to(model):
            raise RuntimeError("boom")
    for k, v in snapshot(model).items():
        assert torch.equal(v, original[k])


def test_state_dict_round_trip():
    model = small_net()
    ema = ModelEMA(model, decay=0.99)
    for step in range(4):
        train_step(model, seed=step)
        ema.update(model)
    state = ema.state_dict()
    restored = ModelEMA(small_net(seed=1), decay=0.5, warmup=False)
    restored.load_state_dict(state)
    assert restored.updates == 4 and restored.decay == 0.99 and restored.warmup is True
    for k, v in ema.module.state_dict().items():
        assert torch.equal(restored.module.state_dict()[k], v)
    assert restored.current_decay() == ema.current_decay()
    with pytest.raises(CheckpointError):
        restored.load_state_dict({"updates": 1})
    with pytest.raises(CheckpointError):
        ModelEMA(nn.Linear(2, 2)).load_state_dict(state)


def test_fit_with_gpu_loader_and_ema_updates_every_step():
    """The engine drives the GPU loader (set_epoch, len) and the EMA (one update per step, EMA evaluated)."""
    from pytorch_utils.data import ArrayDataset
    from pytorch_utils.data.gpu import GPULoader
    from pytorch_utils.train import TrainConfig
    from pytorch_utils.train.loop import fit

    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, 64), "abc")
    train = GPULoader(ds, batch_size=16, train=True, device="cpu")
    train.set_augmentation("standard", cutout=4, pad=2)
    test = GPULoader(ds, batch_size=32, train=False, device="cpu")
    model = small_net()
    ema = ModelEMA(model, decay=0.9)
    history = fit(model, train, test, epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  config=TrainConfig(device="cpu", ema=ema, progress=False))
    assert ema.updates == 2 * len(train) == 8
    assert train.epoch == 1  # the engine's set_epoch(0), set_epoch(1)
    assert len(history) == 2 and all(np.isfinite(r["test_loss"]) for r in history)
