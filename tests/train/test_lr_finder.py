"""LR finder: exact state restoration, suggestions on known curves, a rough start, validation and AMP.

(The plot's tests live in tests/viz/test_lr_finder_plot.py: train never imports viz.)"""
import copy
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from torch_lr_finder import TrainDataLoaderIter

from pytorch_utils.errors import ConfigError
from pytorch_utils.train import lr_finder as lrf
from pytorch_utils.train.lr_finder import (
    LRFinderResult, default_skips, find_lr, recover_raw, restart_smoothing, suggest_index, suggest_steepest,
    suggest_valley,
)

NUM_CLASSES = 4
# Tiny models on random data often end a short sweep still falling; the edge warning is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore:LR suggestion .* landed on the edge:RuntimeWarning")


@pytest.fixture(autouse=True)
def one_thread():
    # 8x8 images are far too small to gain from intra-op threads; on a busy 2-core runner the thread hand-offs made
    # this file 5x slower. Restored after each test so other modules are unaffected.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES),
    )


def make_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    # Learnable labels (sign of two channel means) so the loss really falls during the sweep.
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return x, y


@pytest.fixture
def loader():
    x, y = make_data()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


@pytest.fixture
def trained(loader):
    """A BN model with Adam after a few real steps (moments exist), pending grads, one frozen parameter, a module in
    eval mode and a non-default LR: all things a sloppy restore would get wrong."""
    torch.manual_seed(0)
    model = tiny_cnn()
    model[0].weight.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    batches = iter(loader)
    for _ in range(3):
        x, y = next(batches)
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
    x, y = next(batches)
    criterion(model(x), y).backward()  # grads left in .grad, as between backward and step
    model[3].eval()
    return model, optimizer, criterion


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def snapshot(model, optimizer):
    """Everything the LR finder must leave untouched, deep-copied."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "device": [t.device for t in list(model.parameters()) + list(model.buffers())],
        "param_ids": [id(p) for p in model.parameters()],
        "opt_param_ids": [id(p) for g in optimizer.param_groups for p in g["params"]],
        "opt_state": copy.deepcopy(optimizer.state_dict()),
        "opt_attrs": sorted(optimizer.__dict__),
        "lrs": [g["lr"] for g in optimizer.param_groups],
    }


def assert_bitwise_equal(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, where
        assert torch.equal(_bytes(a), _bytes(b)), f"{where} changed"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_restored(before, model, optimizer):
    after = snapshot(model, optimizer)
    assert_bitwise_equal(before, after)
    # Sanity: the fixture state is not trivially empty, so the comparison above means something.
    assert any(k.endswith("running_mean") for k in before["model"])
    assert before["opt_state"]["state"], "Adam moments should exist before the sweep"


def rng_state():
    return torch.get_rng_state().clone(), random.getstate(), np.random.get_state()[1].copy()


def assert_same_rng(a, b):
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


# ---------------------------------------------------------------------------------------------------------------------
# State restoration
# ---------------------------------------------------------------------------------------------------------------------

def test_normal_sweep_restores_everything_and_suggests_in_range(trained, loader):
    model, optimizer, criterion = trained
    before, rng_before = snapshot(model, optimizer), rng_state()
    result = find_lr(model, optimizer, criterion, loader, start_lr=1e-5, end_lr=1.0, num_iter=40, diverge_th=50)
    assert_restored(before, model, optimizer)
    assert_same_rng(rng_before, rng_state())

    assert isinstance(result, LRFinderResult)
    assert len(result.lrs) == len(result.losses) == 40 and not result.diverged
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(1.0)
    assert np.all(np.diff(np.log10(result.lrs)) > 0)
    assert np.isfinite(result.lr_max) and 1e-5 <= result.lr_max <= 1.0
    assert (result.skip_start, result.skip_end) == (4, 2)  # 10% and 5% of 40 steps
    assert result.skip_start <= result.suggestion_index < 40 - result.skip_end
    # Never past the minimum of the smoothed loss.
    minimum = result.skip_start + int(np.argmin(result.losses[result.skip_start:40 - result.skip_end]))
    assert result.suggestion_index <= minimum and result.lr_max <= result.lrs[minimum]
    assert result.lr_max == result.lrs[result.suggestion_index]
    assert result.lr_min == result.lr_max / 10
    assert all(isinstance(v, float) for v in result.lrs + result.losses)


def test_diverging_sweep_restores_everything(trained, loader):
    model, optimizer, criterion = trained
    before, rng_before = snapshot(model, optimizer), rng_state()
    result = find_lr(model, optimizer, criterion, loader, start_lr=1e-4, end_lr=1e6, num_iter=80, diverge_th=2,
                     skip_start=2, skip_end=2)
    assert result.diverged and len(result.lrs) < 80
    assert_restored(before, model, optimizer)
    assert_same_rng(rng_before, rng_state())
    assert np.isfinite(result.lr_max) and 1e-4 <= result.lr_max <= 1e6


class FailingLoader:
    """A loader (iterable with __len__) that raises after a few batches, like a corrupt image mid-epoch."""

    def __init__(self, data, fail_at):
        self.data, self.fail_at = data, fail_at

    def __len__(self):
        return 100

    def __iter__(self):
        for i in range(len(self)):
            if i == self.fail_at:
                raise RuntimeError("corrupt batch")
            yield self.data


def test_loader_error_propagates_and_state_is_restored(trained):
    model, optimizer, criterion = trained
    before, rng_before = snapshot(model, optimizer), rng_state()
    with pytest.raises(RuntimeError, match="corrupt batch"):
        find_lr(model, optimizer, criterion, FailingLoader(make_data(32), fail_at=5), start_lr=1e-3, end_lr=10,
                num_iter=30)
    assert_restored(before, model, optimizer)
    assert_same_rng(rng_before, rng_state())


def test_restores_values_into_the_same_tensor_objects(trained, loader):
    """Holders of the live tensors (an in-memory checkpoint, a pending .grad) see the pre-sweep values too."""
    model, optimizer, criterion = trained
    p = next(q for q in model.parameters() if q.requires_grad)
    exp_avg, grad, weight = optimizer.state[p]["exp_avg"], p.grad, p
    live = optimizer.state_dict()  # references, not copies
    frozen = copy.deepcopy(live)
    find_lr(model, optimizer, criterion, loader, start_lr=1e-5, end_lr=1.0, num_iter=20)
    assert optimizer.state[p]["exp_avg"] is exp_avg and p.grad is grad and next(
        q for q in model.parameters() if q.requires_grad) is weight
    assert_bitwise_equal(frozen["state"], live["state"])


def test_training_after_sweep_matches_training_without_it(trained, loader):
    """RNG and state restoration together: shuffling and dropout after find_lr are those of a run without it."""
    model_a, opt_a, criterion = trained
    model_b = copy.deepcopy(model_a)
    opt_b = torch.optim.Adam([p for p in model_b.parameters() if p.requires_grad], lr=3e-3, weight_decay=1e-4)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # own tensors: load_state_dict would alias them

    def train(model, optimizer, steps=6):
        model.train()
        for _, (x, y) in zip(range(steps), loader):
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()

    torch.manual_seed(123)
    find_lr(model_a, opt_a, criterion, loader, start_lr=1e-5, end_lr=1.0, num_iter=30)
    train(model_a, opt_a)
    torch.manual_seed(123)
    train(model_b, opt_b)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name


def test_fresh_optimizer_and_attached_scheduler_are_left_as_found(loader):
    torch.manual_seed(0)
    model = tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    # A scheduler already attached: torch-lr-finder alone would refuse this optimizer.
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    before = snapshot(model, optimizer)
    assert "initial_lr" in before["opt_state"]["param_groups"][0]
    result = find_lr(model, optimizer, nn.CrossEntropyLoss(), loader, num_iter=30, start_lr=1e-4, end_lr=1.0)
    after = snapshot(model, optimizer)
    assert_bitwise_equal(before, after)
    assert optimizer.state_dict()["state"] == {}, "a fresh optimizer must stay fresh (no momentum from the sweep)"
    assert scheduler.get_last_lr() == [0.05]
    assert 1e-4 <= result.lr_max <= 1.0


def test_nan_loss_mid_sweep_counts_as_divergence(trained, loader):
    model, optimizer, _ = trained
    calls = {"n": 0}

    def criterion(out, y):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, y)
        return loss * float("nan") if calls["n"] > 30 else loss

    before = snapshot(model, optimizer)
    result = find_lr(model, optimizer, criterion, loader, start_lr=1e-5, end_lr=1.0, num_iter=40)
    assert result.diverged
    assert np.isfinite(result.losses[result.suggestion_index])
    assert result.suggestion_index < 30 - result.skip_end
    assert_restored(before, model, optimizer)

    calls["n"] = 0
    # Too few finite points before the NaN: a clear ConfigError, and still nothing changed.
    with pytest.raises(ConfigError, match="only 30 finite"):
        find_lr(model, optimizer, criterion, loader, start_lr=1e-5, end_lr=1.0, num_iter=40, skip_start=20,
                skip_end=10)
    assert_restored(before, model, optimizer)


# ---------------------------------------------------------------------------------------------------------------------
# Loaders, step modes, AMP
# ---------------------------------------------------------------------------------------------------------------------

class DeviceBatches:
    """Stands in for the GPU-resident loader: an iterable with __len__ whose batches are already on the device."""

    def __init__(self, x, y, batch_size, device):
        self.x, self.y, self.batch_size = x.to(device), y.to(device), batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __iter__(self):
        for i in range(len(self)):
            s = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield self.x[s], self.y[s]


@pytest.mark.parametrize("kind", ["device_batches", "list", "train_iter"])
def test_non_dataloader_loaders_are_restarted_as_needed(trained, loader, kind):
    model, optimizer, criterion = trained
    x, y = make_data(64)  # 4 batches of 16 for a 25-step sweep: the loader must be restarted
    if kind == "device_batches":
        batches = DeviceBatches(x, y, 16, torch.device("cpu"))
    elif kind == "list":
        batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    else:
        batches = TrainDataLoaderIter(DataLoader(TensorDataset(x, y), batch_size=16))
    before = snapshot(model, optimizer)
    result = find_lr(model, optimizer, criterion, batches, start_lr=1e-5, end_lr=1.0, num_iter=25, device="cpu")
    assert len(result.lrs) == 25
    assert_restored(before, model, optimizer)


def test_linear_step_mode_and_valley(trained, loader):
    model, optimizer, criterion = trained
    result = find_lr(model, optimizer, criterion, loader, start_lr=1e-4, end_lr=0.5, num_iter=30,
                     step_mode="linear", suggestion="valley", div=25)
    assert np.allclose(np.diff(result.lrs), (0.5 - 1e-4) / 29)
    assert result.suggestion == "valley"
    assert 1e-4 <= result.lr_max <= 0.5 and result.lr_min == result.lr_max / 25


def test_bf16_autocast_on_cpu(trained, loader):
    model, optimizer, criterion = trained
    seen = []
    hook = model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        before = snapshot(model, optimizer)
        result = find_lr(model, optimizer, criterion, loader, start_lr=1e-5, end_lr=1.0, num_iter=20, amp="bf16")
    finally:
        hook.remove()
    assert set(seen) == {torch.bfloat16}
    assert np.isfinite(result.lr_max)
    assert_restored(before, model, optimizer)


def test_amp_auto_is_fp32_on_cpu_and_fp16_is_refused(trained, loader):
    model, optimizer, criterion = trained
    seen = []
    hook = model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        find_lr(model, optimizer, criterion, loader, start_lr=1e-5, end_lr=1.0, num_iter=20, amp="auto")
    finally:
        hook.remove()
    assert set(seen) == {torch.float32}
    with pytest.raises(ConfigError, match="fp16"):
        find_lr(model, optimizer, criterion, loader, amp="fp16")


# ---------------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"start_lr": 0}, "start_lr must be > 0, got 0"),
    ({"start_lr": -1e-3}, "start_lr must be > 0"),
    ({"start_lr": float("nan")}, "start_lr must be a finite number"),
    ({"start_lr": 1e-2, "end_lr": 1e-3}, "end_lr must be greater than start_lr.*end_lr=0.001"),
    ({"start_lr": 1e-2, "end_lr": 1e-2}, "end_lr must be greater than start_lr"),
    ({"num_iter": 1}, "num_iter must be an integer >= 2, got 1"),
    ({"num_iter": 4}, "num_iter=4 .* skip_start \\+ skip_end \\+ 2 = 5 with skip_start=2, skip_end=1 "
                      "\\(skip_start and skip_end by default: 10% and 5% of num_iter, at least 2 and 1\\)"),
    ({"num_iter": 16, "skip_start": 10, "skip_end": 5}, "num_iter=16 .* = 17 with skip_start=10, skip_end=5$"),
    ({"num_iter": 10, "skip_start": 5, "skip_end": 4}, "= 11"),
    ({"num_iter": 11, "skip_start": 9}, "num_iter=11 .* = 12 with skip_start=9, skip_end=1 \\(skip_end by default"),
    ({"step_mode": "cosine"}, "unknown step_mode 'cosine'; use one of 'exp', 'linear'"),
    ({"suggestion": "minimum"}, "unknown LR suggestion 'minimum'; use one of 'steepest', 'valley'"),
    ({"div": 0.5}, "div must be >= 1.*0.5"),
    ({"smooth_f": 1.0}, "smooth_f must be in \\[0, 1\\)"),
    ({"diverge_th": 1}, "diverge_th must be > 1"),
    ({"skip_start": -1}, "skip_start must be an integer >= 0"),
    ({"skip_end": 1.5}, "skip_end must be an integer >= 0"),
    ({"amp": "int8"}, "unknown amp option 'int8'"),
])
def test_bad_arguments_raise_config_error(trained, loader, kwargs, match):
    model, optimizer, criterion = trained
    before = snapshot(model, optimizer)
    with pytest.raises(ConfigError, match=match):
        find_lr(model, optimizer, criterion, loader, **kwargs)
    assert_restored(before, model, optimizer)


def test_empty_and_malformed_loaders_raise_config_error(trained):
    model, optimizer, criterion = trained
    before = snapshot(model, optimizer)
    with pytest.raises(ConfigError, match="empty"):
        find_lr(model, optimizer, criterion, [])
    with pytest.raises(ConfigError, match="\\(inputs, targets\\) batches"):
        find_lr(model, optimizer, criterion, [torch.randn(4, 3, 8, 8)] * 3, num_iter=20)
    assert_restored(before, model, optimizer)


# ---------------------------------------------------------------------------------------------------------------------
# Suggestion helpers on hand-made curves
# ---------------------------------------------------------------------------------------------------------------------

LRS = np.logspace(-5, 0, 30).tolist()


def test_steepest_picks_the_sharpest_drop_and_honours_skips():
    losses = [5.0] * 11 + [4.0, 2.0] + [1.8] * 17
    # Central differences: index 11 spans 5.0 -> 2.0 (-1.5/step), index 12 spans 4.0 -> 1.8 (-1.1/step).
    assert suggest_steepest(LRS, losses, skip_start=0, skip_end=0) == 11
    early_drop = [9.0, 8.0, 5.0] + losses[3:]  # index 1 spans 9 -> 5 (-2/step), steeper than index 11
    assert suggest_steepest(LRS, early_drop, skip_start=0, skip_end=0) == 1
    assert suggest_steepest(LRS, early_drop, skip_start=3, skip_end=0) == 11
    late_drop = losses[:-3] + [1.8, 0.1, 0.1]  # a cliff inside skip_end is ignored
    assert suggest_steepest(LRS, late_drop, skip_start=0, skip_end=3) == 11
    assert suggest_index(LRS, losses, "steepest", 0, 0) == 11


def _valley_curve(bump=False):
    rise = np.linspace(2.5, 2.95, 10)         # indices 0-9: noise drifting up
    fall = np.linspace(2.9, 1.0, 21)          # indices 10-30: the long descent
    tail = np.linspace(1.2, 2.8, 9)           # indices 31-39: divergence
    losses = np.concatenate([rise, fall, tail])
    if bump:
        losses[20] = losses[19] + 0.05        # a noise bump inside the descent
    return losses.tolist()


@pytest.mark.parametrize("bump", [False, True])
def test_valley_picks_two_thirds_down_the_longest_descent(bump):
    lrs = np.logspace(-6, 1, 40).tolist()
    losses = _valley_curve(bump)
    # The descent runs from index 9 (2.95, the top) to index 30 (1.0): 9 + round(2/3 * 21) = 23.
    # A bump only removes one point from the run; it does not cut the stretch in two.
    assert suggest_valley(lrs, losses, skip_start=0, skip_end=0) == 23
    assert suggest_valley(lrs, losses, skip_start=5, skip_end=5) == 23
    assert suggest_index(lrs, losses, "valley", 5, 5) == 23


def test_helpers_reject_short_curves_and_unknown_names():
    with pytest.raises(ConfigError, match="at least skip_start \\+ skip_end \\+ 2 = 17"):
        suggest_steepest(LRS[:16], [1.0] * 16, 10, 5)
    with pytest.raises(ConfigError, match="at least skip_start \\+ skip_end \\+ 2 = 5 loss points"):
        suggest_steepest(LRS[:4], [3.0, 2.0, 1.0, 0.5])  # default skips: 2 + 1
    with pytest.raises(ConfigError, match="must be finite"):
        suggest_valley(LRS, [1.0] * 20 + [float("nan")] * 10, 2, 2)
    with pytest.raises(ConfigError, match="differ in length"):
        suggest_valley(LRS, [1.0] * 3, 0, 0)
    with pytest.raises(ConfigError, match="'steepest', 'valley'"):
        suggest_index(LRS, [1.0] * 30, "fastest")


def _dip_after_divergence():
    """An Adam-like sweep: a smooth descent to the minimum at index 45, a climb (divergence starting), then a second
    dip past the minimum that is both steeper (one cliff) and longer than the real descent."""
    lrs = np.logspace(-6, 1, 100)
    flat = np.full(10, 2.30)                                                   # 0-9
    descent = 2.30 - 1.2 * (1 - np.cos(np.linspace(0, np.pi, 36))) / 2         # 10-45: 2.30 -> 1.10
    climb = np.linspace(1.25, 2.6, 8)                                          # 46-53
    dip = np.concatenate([np.linspace(2.55, 2.35, 10), [1.6], np.linspace(1.55, 1.30, 26)])  # 54-90
    tail = np.linspace(1.6, 4.0, 9)                                            # 91-99
    return lrs.tolist(), np.concatenate([flat, descent, climb, dip, tail]).tolist()


@pytest.mark.parametrize("rule", ["steepest", "valley"])
def test_suggestions_never_go_past_the_loss_minimum(rule):
    lrs, losses = _dip_after_divergence()
    skip_start, skip_end = default_skips(len(lrs))
    minimum = skip_start + int(np.argmin(losses[skip_start:len(losses) - skip_end]))
    assert minimum == 45
    # The curve really is a trap: over the whole window the steepest slope lies in the later dip.
    window = slice(skip_start, len(losses) - skip_end)
    assert skip_start + np.argmin(np.gradient(losses[window], np.log10(lrs[window]))) > minimum
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pick inside the descent is not on an edge: no warning
        index = suggest_index(lrs, losses, rule)
    assert skip_start < index < minimum
    assert lrs[index] <= lrs[int(np.argmin(losses))]
    # The steepest point of the cosine descent is its middle (index 10 + 35/2); valley is 2/3 down from its top.
    assert index == {"steepest": 27, "valley": 33}[rule]


def test_steepest_on_a_clean_curve_is_the_inflection_point():
    lrs = np.logspace(-6, 1, 100)
    logs = np.log10(lrs)
    fall = 2.3 - 1.3 / (1 + np.exp(-(logs + 3) / 0.4))     # steepest at lr = 1e-3
    rise = np.where(logs > -0.5, 3.0 * (logs + 0.5) ** 2, 0.0)  # divergence after 10^-0.5
    losses = (fall + rise).tolist()
    expected = int(np.argmin(np.abs(logs + 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert suggest_steepest(lrs.tolist(), losses) == expected == 42
    assert lrs[expected] == pytest.approx(1e-3, rel=0.1)


def test_default_skips_scale_with_the_sweep():
    assert default_skips(100) == (10, 5)
    assert default_skips(50) == (5, 2)
    assert default_skips(20) == (2, 1)
    assert default_skips(5) == (2, 1)
    assert default_skips(300) == (30, 15)
    # A 50-step sweep keeps 43 candidates (the old fixed 10 + 5 skip left 35, and a 20-step sweep only 5).
    lrs, losses = _dip_after_divergence()
    lrs, losses = lrs[::2], losses[::2]
    assert len(lrs) == 50
    assert 2 < suggest_steepest(lrs, losses) < 45 // 2 + 1


def test_edge_picks_warn():
    lrs = np.logspace(-5, 0, 30).tolist()
    rising = np.linspace(1.0, 3.0, 30).tolist()
    with pytest.warns(RuntimeWarning, match="never fell below its value at skip_start=3 .* lower start_lr$"):
        assert suggest_steepest(lrs, rising, 3, 1) == 3
    with pytest.warns(RuntimeWarning, match="'valley' landed on the edge"):
        assert suggest_valley(lrs, rising, 3, 1) == 3
    falling_from_the_start = (1.0 + 2.0 * np.exp(-np.arange(30) / 3.0)).tolist()  # fastest fall at index 0
    falling_from_the_start[-3:] = [1.5, 2.0, 3.0]
    with pytest.warns(RuntimeWarning, match="first point after skip_start=2 .* raise skip_start or use "
                                            "suggestion='valley'"):
        assert suggest_steepest(lrs, falling_from_the_start, 2, 1) == 2
    accelerating = (3.0 - 2.0 * np.linspace(0, 1, 30) ** 3).tolist()  # still falling fastest at the end
    with pytest.warns(RuntimeWarning, match="still falling fastest at the last point.*raise end_lr"):
        assert suggest_steepest(lrs, accelerating, 2, 1) == 28
    v_shape = [2.0, 2.0, 2.0, 1.0] + np.linspace(1.5, 4.0, 26).tolist()  # a two-point descent into the minimum
    with pytest.warns(RuntimeWarning, match="'valley' .* the loss minimum itself \\(lr 3.29e-05\\)"):
        assert suggest_valley(lrs, v_shape, 2, 1) == 3


def test_find_lr_reissues_edge_warnings_at_the_callers_line(trained, loader, monkeypatch):
    model, optimizer, criterion = trained
    real = lrf.suggest_index

    def suggest(*args):
        warnings.warn("LR suggestion 'steepest' landed on the edge of its search range: test", RuntimeWarning)
        return real(*args)

    monkeypatch.setattr(lrf, "suggest_index", suggest)
    before = snapshot(model, optimizer)
    with pytest.warns(RuntimeWarning, match="landed on the edge") as record:
        find_lr(model, optimizer, criterion, loader, start_lr=1e-5, end_lr=1.0, num_iter=20, progress=False)
    files = {w.filename for w in record if "landed on the edge" in str(w.message)}
    assert files == {__file__}
    assert_restored(before, model, optimizer)


# ---------------------------------------------------------------------------------------------------------------------
# A rough start
# ---------------------------------------------------------------------------------------------------------------------

ROUGH_START = [6.0, 4.5, 3.0]  # the first raw losses, far above the 2.3 plateau


def _rough_sweep(steps=None):
    """A model whose raw loss is set by hand: the rough start, a 2.3 plateau, the real descent near lr 1e-3, and a
    blow-up near lr 1 (the criterion reads the LR the sweep has set)."""
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = {"n": 0}

    def criterion(out, _):
        i = calls["n"]
        calls["n"] += 1
        lr = optimizer.param_groups[0]["lr"]
        value = ROUGH_START[i] if i < len(ROUGH_START) else 0.5 + 1.8 / (1 + (lr / 1e-3) ** 2) + 3 * (lr / 0.3) ** 2
        return out.sum() * 0 + value

    data = DataLoader(TensorDataset(torch.randn(64, 2), torch.zeros(64, dtype=torch.long)), batch_size=8)
    return model, optimizer, criterion, data


def test_rough_start_does_not_pick_the_first_candidate():
    model, optimizer, criterion, data = _rough_sweep()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pick is inside the real descent: no edge warning either
        result = find_lr(model, optimizer, criterion, data, progress=False)  # find_lr's default range and rule
    assert result.raw_losses[:4] == pytest.approx(ROUGH_START + [2.3])
    # torch-lr-finder's own smoothed curve would put the steepest slope on its first candidate (lr ~6.4e-7).
    smoothed = [result.raw_losses[0]]
    for raw in result.raw_losses[1:]:
        smoothed.append(0.05 * raw + 0.95 * smoothed[-1])
    with pytest.warns(RuntimeWarning, match="raise skip_start or use suggestion='valley'"):
        old = suggest_steepest(result.lrs, smoothed, result.skip_start, result.skip_end)
    assert old == result.skip_start and result.lrs[old] == pytest.approx(6.4e-7, rel=0.05)
    assert 3e-4 < result.lr_max < 1e-2
    assert result.suggestion_index > result.skip_start


def test_restart_smoothing_recovers_raw_losses_and_forgets_the_start():
    raw = np.array([6.0, 4.5, 3.0, 2.3, 2.3, 2.3, 2.0, 1.5])
    f = 0.05
    smoothed = [raw[0]]
    for v in raw[1:]:  # torch-lr-finder's smoothing
        smoothed.append(f * v + (1 - f) * smoothed[-1])
    assert recover_raw(smoothed, f) == pytest.approx(raw)
    again = restart_smoothing(smoothed, f, 3)
    assert again[:3] == pytest.approx(smoothed[:3])
    assert again[3:6] == pytest.approx([2.3, 2.3, 2.3])  # the rough start no longer leaks past index 3
    assert again[6] == pytest.approx(f * 2.0 + (1 - f) * 2.3)
    assert restart_smoothing(smoothed, 0.0, 3) == pytest.approx(smoothed)  # smooth_f=0: nothing to undo
