"""LR finder: the spec's checks, exact state restoration, the sweep's LRs and smoothing, suggestions on known curves,
a rough start, loaders and AMP.

(The plot's tests live in tests/viz/test_lr_finder_plot.py: train never imports viz.)"""
import copy
import dataclasses
import logging
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from torch_lr_finder import TrainDataLoaderIter

from pytorch_utils.errors import ConfigError
from pytorch_utils.train.lr_finder import LRFinderResult, LRFinderSpec, find_lr, smooth, suggest

NUM_CLASSES = 4


@pytest.fixture(autouse=True)
def one_thread():
    # 8x8 images are far too small to gain from intra-op threads; on a busy 2-core runner the thread hand-offs made
    # this file 5x slower. Restored after each test so other modules are unaffected.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def edge_log(caplog):
    """The package logger's records (it does not propagate to the root, where caplog listens)."""
    logger = logging.getLogger("pytorch_utils")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def spec(**kw):
    return LRFinderSpec(**{"start_lr": 1e-5, "end_lr": 1.0, "num_iter": 20, **kw})


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


def snapshot(model, optimizer):
    """Everything the LR finder must leave untouched, deep-copied."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "device": [t.device for t in list(model.parameters()) + list(model.buffers())],
        "opt_state": copy.deepcopy(optimizer.state_dict()),
        "opt_attrs": sorted(vars(optimizer)),  # no patched ``step`` left behind by the sweep's scheduler
        "lrs": [g["lr"] for g in optimizer.param_groups],
        "rng": (torch.get_rng_state().clone(), random.getstate(), np.random.get_state()[1].copy()),
    }


def assert_equal(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, where
        assert torch.equal(a, b), f"{where} changed"
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"{where} changed"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_restored(before, model, optimizer):
    assert_equal(before, snapshot(model, optimizer))
    # Sanity: the fixture state is not trivially empty, so the comparison above means something.
    assert any(k.endswith("running_mean") for k in before["model"])
    assert before["opt_state"]["state"], "Adam moments should exist before the sweep"


# ---------------------------------------------------------------------------------------------------------------------
# The spec checks itself
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"start_lr": 1.0, "end_lr": 0.001}, r"^lr_finder: start_lr \(1.0\) must be below end_lr \(0.001\)$"),
    ({"start_lr": 0.01, "end_lr": 0.01}, "start_lr .* must be below end_lr"),
    ({"suggestion": "minimum"}, "lr_finder field 'suggestion' must be one of 'steepest', 'valley', got 'minimum'"),
    ({"start_lr": 0}, "'start_lr' must be > 0, got 0"),
    ({"start_lr": -1e-3}, "'start_lr' must be > 0"),
    ({"start_lr": float("nan")}, "'start_lr' must be > 0, got nan"),
    ({"end_lr": float("inf")}, "'end_lr' must be > 0, got inf"),
    ({"num_iter": 9}, "'num_iter' must be >= 10, got 9"),
    ({"num_iter": 50.0}, "'num_iter' must be int"),
    ({"div": 0.5}, "'div' must be >= 1, got 0.5"),
    ({"div": True}, "'div' must be float"),
])
def test_spec_refuses_impossible_values_naming_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LRFinderSpec(**kwargs)


def test_spec_defaults_and_replace_check_again():
    s = LRFinderSpec()
    assert (s.start_lr, s.end_lr, s.num_iter, s.suggestion, s.div) == (1e-7, 10.0, 100, "steepest", 10.0)
    with pytest.raises(ConfigError, match="end_lr"):
        dataclasses.replace(s, end_lr=1e-8)


# ---------------------------------------------------------------------------------------------------------------------
# The sweep and state restoration
# ---------------------------------------------------------------------------------------------------------------------

def test_sweep_is_exponential_smoothed_once_and_restores_everything(trained, loader):
    model, optimizer, criterion = trained
    before = snapshot(model, optimizer)
    result = find_lr(model, optimizer, criterion, loader, spec(num_iter=40))
    assert_restored(before, model, optimizer)

    assert isinstance(result, LRFinderResult) and not result.diverged
    assert result.lrs == pytest.approx(np.geomspace(1e-5, 1.0, 40).tolist(), rel=1e-12)
    assert result.lrs[0] == 1e-5
    # One smoothing: fastai's bias-corrected moving average of the raw losses (torch-lr-finder ran with smooth_f=0).
    avg, expected = 0.0, []
    for i, raw in enumerate(result.raw_losses, 1):
        avg = 0.95 * avg + 0.05 * raw
        expected.append(avg / (1 - 0.95 ** i))
    assert result.losses == pytest.approx(expected, rel=1e-12)
    assert result.losses[0] == pytest.approx(result.raw_losses[0], rel=1e-15)
    assert len(result.raw_losses) == 40 and np.std(np.diff(result.raw_losses)) > np.std(np.diff(result.losses))

    assert (result.skip_start, result.skip_end) == (4, 2)  # 10% and 5% of 40 steps
    assert 4 <= result.suggestion_index < 38
    minimum = 4 + int(np.argmin(result.losses[4:38]))  # never past the minimum of the smoothed loss
    assert result.suggestion_index <= minimum
    assert result.lr_max == result.lrs[result.suggestion_index] and result.lr_min == result.lr_max / 10
    assert all(isinstance(v, float) for v in result.lrs + result.losses + result.raw_losses)
    assert repr(result).startswith(f"LRFinderResult(lr_max={result.lr_max:.3g}") and "points=40" in repr(result)


def test_diverging_sweep_stops_early_and_restores_everything(trained, loader):
    model, optimizer, criterion = trained
    before = snapshot(model, optimizer)
    result = find_lr(model, optimizer, criterion, loader, spec(start_lr=1e-4, end_lr=1e6, num_iter=80))
    assert result.diverged and 8 + 4 + 2 <= len(result.lrs) < 80
    assert_restored(before, model, optimizer)
    assert 1e-4 <= result.lr_max <= 1e6


def test_progress_switch_mutes_the_bar_and_the_library_lines_are_never_printed(trained, loader, capsys):
    model, optimizer, criterion = trained
    quiet = find_lr(model, optimizer, criterion, loader, spec(num_iter=20), progress=False)
    out, err = capsys.readouterr()
    assert "20/20" not in err and "search finished" not in out  # no bar, no "See the graph with {finder_name}..."
    shown = find_lr(model, optimizer, criterion, loader, spec(num_iter=20))
    out, err = capsys.readouterr()
    assert "search finished" not in out and "20/20" in err  # the bar counts the 20 sweep steps
    assert shown.lrs == quiet.lrs and len(shown.raw_losses) == 20


class FailingLoader:
    """A loader that raises after a few batches, like a corrupt image mid-epoch."""

    def __init__(self, data, fail_at):
        self.data, self.fail_at = data, fail_at

    def __iter__(self):
        for i in range(100):
            if i == self.fail_at:
                raise RuntimeError("corrupt batch")
            yield self.data


def test_loader_error_propagates_and_state_is_restored(trained):
    model, optimizer, criterion = trained
    before = snapshot(model, optimizer)
    with pytest.raises(RuntimeError, match="corrupt batch"):
        find_lr(model, optimizer, criterion, FailingLoader(make_data(32), fail_at=5), spec())
    assert_restored(before, model, optimizer)


def test_training_after_sweep_matches_training_without_it(trained, loader):
    """RNG and state restoration together: shuffling and dropout after find_lr are those of a run without it."""
    model_a, opt_a, criterion = trained
    model_b = copy.deepcopy(model_a)
    opt_b = torch.optim.Adam([p for p in model_b.parameters() if p.requires_grad], lr=3e-3, weight_decay=1e-4)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))

    def train(model, optimizer, steps=6):
        model.train()
        for _, (x, y) in zip(range(steps), loader):
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()

    torch.manual_seed(123)
    find_lr(model_a, opt_a, criterion, loader, spec(num_iter=30))
    train(model_a, opt_a)
    torch.manual_seed(123)
    train(model_b, opt_b)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name


def test_fresh_optimizer_and_attached_scheduler_are_left_as_found(loader):
    torch.manual_seed(0)
    model = tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)  # torch-lr-finder alone would refuse it
    before = snapshot(model, optimizer)
    assert "initial_lr" in before["opt_state"]["param_groups"][0]
    result = find_lr(model, optimizer, nn.CrossEntropyLoss(), loader, spec(start_lr=1e-4, num_iter=30))
    assert_equal(before, snapshot(model, optimizer))
    assert optimizer.state_dict()["state"] == {}, "a fresh optimizer must stay fresh (no momentum from the sweep)"
    assert scheduler.get_last_lr() == [0.05] and optimizer.param_groups[0]["lr"] == 0.05
    assert 1e-4 <= result.lr_max <= 1.0


def test_nan_loss_mid_sweep_cuts_the_curve(trained, loader):
    model, optimizer, _ = trained
    calls = {"n": 0}

    def criterion(out, y):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, y)
        return loss * float("nan") if calls["n"] > 30 else loss

    before = snapshot(model, optimizer)
    result = find_lr(model, optimizer, criterion, loader, spec(num_iter=40))
    assert result.diverged and len(result.lrs) == len(result.losses) == len(result.raw_losses) == 30
    assert np.isfinite(result.losses).all() and result.suggestion_index < 30 - result.skip_end
    assert_restored(before, model, optimizer)

    calls["n"] = -1000
    nan_at_once = lambda out, y: nn.functional.cross_entropy(out, y) * float("nan")  # noqa: E731
    with pytest.raises(ConfigError, match="recorded only 0 finite losses .* needs 8.* lower lr_finder start_lr"):
        find_lr(model, optimizer, nan_at_once, loader, spec(num_iter=40))
    assert_restored(before, model, optimizer)


# ---------------------------------------------------------------------------------------------------------------------
# Loaders, devices, AMP
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
def test_non_dataloader_loaders_are_restarted_as_needed(trained, kind):
    model, optimizer, criterion = trained
    x, y = make_data(64)  # 4 batches of 16 for a 25-step sweep: the loader must be restarted
    if kind == "device_batches":
        batches = DeviceBatches(x, y, 16, torch.device("cpu"))
    elif kind == "list":
        batches = [(x[i:i + 16], y[i:i + 16], i) for i in range(0, 64, 16)]  # extra items per batch are ignored
    else:
        batches = TrainDataLoaderIter(DataLoader(TensorDataset(x, y), batch_size=16))
    before = snapshot(model, optimizer)
    result = find_lr(model, optimizer, criterion, batches, spec(num_iter=25), device="cpu")
    assert len(result.lrs) == 25
    assert_restored(before, model, optimizer)


def test_empty_and_malformed_loaders_are_refused(trained):
    model, optimizer, criterion = trained
    bare_tensors = [torch.randn(4, 3, 8, 8)] * 3
    before = snapshot(model, optimizer)
    with pytest.raises(ConfigError, match="loader is empty"):
        find_lr(model, optimizer, criterion, [], spec())
    with pytest.raises(ValueError, match="batch type is not supported"):  # torch-lr-finder's own message
        find_lr(model, optimizer, criterion, bare_tensors, spec())
    assert_restored(before, model, optimizer)


def test_bf16_autocast_on_cpu(trained, loader):
    model, optimizer, criterion = trained
    seen = []
    hook = model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        before = snapshot(model, optimizer)
        result = find_lr(model, optimizer, criterion, loader, spec(), amp="bf16")
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
        find_lr(model, optimizer, criterion, loader, spec(), amp="auto")
    finally:
        hook.remove()
    assert set(seen) == {torch.float32}
    with pytest.raises(ConfigError, match="fp16"):
        find_lr(model, optimizer, criterion, loader, amp="fp16")
    with pytest.raises(ConfigError, match="unknown amp option 'int8'"):
        find_lr(model, optimizer, criterion, loader, amp="int8")


# ---------------------------------------------------------------------------------------------------------------------
# Suggestions on hand-made curves
# ---------------------------------------------------------------------------------------------------------------------

LRS = np.logspace(-5, 0, 30).tolist()


def test_steepest_picks_the_sharpest_drop_and_honours_skips():
    losses = [5.0] * 11 + [4.0, 2.0] + [1.8] * 17
    # Central differences: index 11 spans 5.0 -> 2.0 (-1.5/step), index 12 spans 4.0 -> 1.8 (-1.1/step).
    assert suggest(LRS, losses) == suggest(LRS, losses, "steepest", 0, 0) == 11
    early_drop = [9.0, 8.0, 5.0] + losses[3:]  # index 1 spans 9 -> 5 (-2/step), steeper than index 11
    assert suggest(LRS, early_drop) == 1
    assert suggest(LRS, early_drop, "steepest", 3, 0) == 11
    late_drop = losses[:-3] + [1.8, 0.1, 0.1]  # a cliff inside skip_end is ignored
    assert suggest(LRS, late_drop, "steepest", 0, 3) == 11


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
    assert suggest(lrs, losses, "valley") == 23
    assert suggest(lrs, losses, "valley", 5, 5) == 23


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
def test_suggestions_never_go_past_the_loss_minimum(rule, edge_log):
    lrs, losses = _dip_after_divergence()
    assert 10 + int(np.argmin(losses[10:95])) == 45
    # The curve really is a trap: over the whole window the steepest slope lies in the later dip.
    assert 10 + np.argmin(np.gradient(losses[10:95], np.log10(lrs[10:95]))) > 45
    index = suggest(lrs, losses, rule, 10, 5)
    assert not edge_log.records  # a pick inside the descent is not on an edge
    # The steepest point of the cosine descent is its middle (index 10 + 35/2); valley is 2/3 down from its top.
    assert index == {"steepest": 27, "valley": 33}[rule]


def test_steepest_on_a_clean_curve_is_the_inflection_point(edge_log):
    lrs = np.logspace(-6, 1, 100)
    logs = np.log10(lrs)
    fall = 2.3 - 1.3 / (1 + np.exp(-(logs + 3) / 0.4))     # steepest at lr = 1e-3
    rise = np.where(logs > -0.5, 3.0 * (logs + 0.5) ** 2, 0.0)  # divergence after 10^-0.5
    assert suggest(lrs.tolist(), (fall + rise).tolist(), "steepest", 10, 5) == int(np.argmin(np.abs(logs + 3))) == 42
    assert not edge_log.records


def test_edge_picks_log_a_warning(edge_log):
    rising = np.linspace(1.0, 3.0, 30).tolist()
    for rule in ("steepest", "valley"):
        assert suggest(LRS, rising, rule, 3, 1) == 3
    falling_from_the_start = (1.0 + 2.0 * np.exp(-np.arange(30) / 3.0)).tolist()  # fastest fall at index 0
    falling_from_the_start[-3:] = [1.5, 2.0, 3.0]
    assert suggest(LRS, falling_from_the_start, "steepest", 2, 1) == 2
    assert [r.levelno for r in edge_log.records] == [logging.WARNING] * 3
    assert all("landed on the edge of its search range" in r.message and "lower start_lr or use suggestion='valley'"
               in r.message for r in edge_log.records)
    edge_log.clear()
    accelerating = (3.0 - 2.0 * np.linspace(0, 1, 30) ** 3).tolist()  # still falling fastest at the end
    assert suggest(LRS, accelerating, "steepest", 2, 1) == 28
    v_shape = [2.0, 2.0, 2.0, 1.0] + np.linspace(1.5, 4.0, 26).tolist()  # a two-point descent into the minimum
    assert suggest(LRS, v_shape, "valley", 2, 1) == 3
    assert [r.message.split(": ")[-1] for r in edge_log.records] == [
        "the loss minimum, where training turns unstable; raise end_lr if the loss was still falling there"] * 2
    assert "(lr 3.29e-05)" in edge_log.records[1].message


def test_smooth_is_the_bias_corrected_moving_average():
    assert smooth([4.0, 2.0]) == pytest.approx([4.0, (0.95 * 0.05 * 4 + 0.05 * 2) / (1 - 0.95 ** 2)])
    assert smooth([2.3] * 50) == pytest.approx([2.3] * 50)  # a flat curve stays flat from the first point
    assert smooth([1.0, 5.0], beta=0.0) == [1.0, 5.0]


# ---------------------------------------------------------------------------------------------------------------------
# A rough start
# ---------------------------------------------------------------------------------------------------------------------

ROUGH_START = [6.0, 4.5, 3.0]  # the first raw losses, far above the 2.3 plateau


def test_rough_start_does_not_pick_the_first_candidate(edge_log):
    """A model whose raw loss is set by hand: the rough start, a 2.3 plateau, the real descent near lr 1e-3, and a
    blow-up near lr 1 (the criterion reads the LR the sweep has set). find_lr's default spec."""
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
    result = find_lr(model, optimizer, criterion, data)
    assert result.raw_losses[:4] == pytest.approx(ROUGH_START + [2.3])
    assert result.diverged and not edge_log.records  # the pick is inside the real descent: no edge warning
    assert 3e-4 < result.lr_max < 1e-2 and result.suggestion_index > result.skip_start == 10
    assert optimizer.param_groups[0]["lr"] == 0.1
