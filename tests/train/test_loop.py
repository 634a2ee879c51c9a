import logging
import math

import pytest
import torch
import torch.nn as nn

from _helpers import TinyNet, plain_loader, synthetic_loaders, tensor_data
from pytorch_utils.errors import ConfigError, NonFiniteLossError
from pytorch_utils.models import create_model
from pytorch_utils.train import evaluate, fit, seed_everything, train_one_epoch
from pytorch_utils.train.loop import Callback, History, format_record, scheduler_interval


def test_two_epochs_on_synthetic_beat_chance_by_far():
    seed_everything(0)
    train, test = synthetic_loaders(n=1000, test_n=300, num_classes=10, batch_size=64, augmentation="standard")
    model = create_model("strixbee_l1", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hist = fit(model, train, test, epochs=2, optimizer=opt, progress=False)
    assert len(hist) == 2
    assert hist[-1]["test_acc"] > 40.0  # chance is 10 %
    for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"):
        assert key in hist[0]
    assert [r["epoch"] for r in hist] == [1, 2]


def test_history_helpers_and_json(tmp_path):
    h = History([{"epoch": 1, "test_acc": 50.0}, {"epoch": 2, "test_acc": 70.0}, {"epoch": 3, "test_acc": 60.0}])
    assert h.column("test_acc") == [50.0, 70.0, 60.0]
    assert h.best("test_acc")["epoch"] == 2 and h.best("test_acc", mode="min")["epoch"] == 1
    h.save_json(tmp_path / "h.json")
    import json
    assert json.loads((tmp_path / "h.json").read_text())[1]["test_acc"] == 70.0
    assert "test_acc 70.00%" in format_record(h[1])


def test_evaluate_restores_mode_and_returns_outputs():
    x, y = tensor_data(64)
    model = TinyNet()
    model.train()
    out = evaluate(model, plain_loader(x, y, 16), return_outputs=True, return_inputs=True)
    assert model.training  # mode restored
    assert out["logits"].shape == (64, 4) and out["preds"].shape == (64,) and out["inputs"].shape == x.shape
    assert torch.equal(out["targets"], y)
    assert torch.allclose(out["probs"].sum(1), torch.ones(64))
    assert out["acc"] == pytest.approx(100.0 * (out["preds"] == y).float().mean().item())
    model.eval()
    with torch.no_grad():
        ref = nn.functional.cross_entropy(model(x), y).item()
    assert out["loss"] == pytest.approx(ref, rel=1e-5)


def test_evaluate_tta_flip_averages_probabilities():
    x, y = tensor_data(32)
    model = TinyNet().eval()
    out = evaluate(model, plain_loader(x, y, 8), tta="flip", return_outputs=True)
    with torch.no_grad():
        p = (model(x).softmax(1) + model(torch.flip(x, dims=(3,))).softmax(1)) / 2
    assert torch.allclose(out["probs"], p, atol=1e-5)


def test_nan_loss_raises_with_step():
    x, y = tensor_data(64)
    x[40] = float("nan")  # sample 40 -> batch 2 (batch size 16), step index 2
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="step 2"):
        train_one_epoch(model, plain_loader(x, y, 16), opt, nn.CrossEntropyLoss(), progress=False, epoch=1)


class CountingScheduler:
    def __init__(self, interval):
        self.interval, self.calls, self.metrics = interval, 0, []

    def step(self, metric=None):
        self.calls += 1
        if metric is not None:
            self.metrics.append(metric)

    def state_dict(self):
        return {}


@pytest.mark.parametrize("interval,expected", [("batch", 3 * 4), ("epoch", 3), ("plateau", 3)])
def test_scheduler_stepping_by_declaration(interval, expected):
    x, y = tensor_data(64)
    sched = CountingScheduler(interval)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = fit(model, plain_loader(x, y, 16), plain_loader(x, y, 32), epochs=3, optimizer=opt, scheduler=sched,
               progress=False)
    assert sched.calls == expected
    if interval == "plateau":
        assert sched.metrics == pytest.approx([r["test_loss"] for r in hist])


def test_scheduler_interval_guess():
    from pytorch_utils.train.schedules import StepSchedule

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert scheduler_interval(StepSchedule([(0, lambda s: 0.1)]), "epoch") == "step"
    assert scheduler_interval(torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=10)) == "batch"
    assert scheduler_interval(torch.optim.lr_scheduler.ReduceLROnPlateau(opt)) == "plateau"
    assert scheduler_interval(torch.optim.lr_scheduler.StepLR(opt, 2)) == "epoch"


def test_callbacks_see_state_and_can_stop():
    x, y = tensor_data(64)
    seen = []

    class Probe(Callback):
        def on_epoch_end(self, state, record):
            seen.append((state.epoch, record["epoch"]))
            if state.epoch == 2:
                state.stop = True

    model = TinyNet()
    hist = fit(model, plain_loader(x, y, 16), None, epochs=5, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
               callbacks=[Probe()], progress=False)
    assert seen == [(1, 1), (2, 2)] and len(hist) == 2 and "test_acc" not in hist[0]


def test_fit_logs_lines_and_validates(caplog):
    x, y = tensor_data(32)
    model = TinyNet()
    with caplog.at_level(logging.INFO, logger="pytorch_utils.train.loop"):
        fit(model, plain_loader(x, y, 16), plain_loader(x, y, 16), epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "pytorch_utils.train.loop"]
    assert len(lines) == 1 and lines[0].startswith("epoch   1")
    with pytest.raises(ConfigError):
        fit(model, plain_loader(x, y, 16), None, epochs=0, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_amp_bf16_on_cpu_runs_and_fp16_on_cpu_is_refused():
    x, y = tensor_data(32)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = fit(model, plain_loader(x, y, 16), plain_loader(x, y, 16), epochs=1, optimizer=opt, amp="bf16",
               progress=False)
    assert math.isfinite(hist[0]["train_loss"])
    with pytest.raises(ConfigError, match="fp16"):
        fit(model, plain_loader(x, y, 16), None, epochs=1, optimizer=opt, amp="fp16", progress=False)


def test_tta_stays_finite_for_confident_wrong_predictions():
    from pytorch_utils.train.tta import get_tta

    class Confident(nn.Module):
        def forward(self, x):  # huge logits: softmax underflows to exactly 0 for the other classes
            return torch.stack([x.mean((1, 2, 3)) * 1e4, -x.mean((1, 2, 3)) * 1e4], dim=1)

    x = torch.randn(8, 3, 8, 8)
    logp = get_tta("flip_translate")(Confident(), x)
    assert torch.isfinite(logp).all()
    assert torch.allclose(logp.exp().sum(1), torch.ones(8), atol=1e-5)
    loss = nn.functional.cross_entropy(logp, torch.ones(8, dtype=torch.long))
    assert torch.isfinite(loss)


def test_bf16_batches_are_cast_to_the_model_dtype_outside_autocast():
    # The GPU loader hands out bf16 batches under bf16 autocast; a notebook's plain evaluate(model, loader) (no
    # autocast) must still work and score like the fp32 batches would.
    x, y = tensor_data(64)
    model = TinyNet().eval()
    ref = evaluate(model, plain_loader(x, y, 16), return_outputs=True)
    out = evaluate(model, plain_loader(x.bfloat16(), y, 16), return_outputs=True)
    assert out["logits"].dtype == torch.float32
    assert torch.allclose(out["logits"], ref["logits"], atol=0.1)
    stats = train_one_epoch(model, plain_loader(x.bfloat16(), y, 16), torch.optim.SGD(model.parameters(), lr=0.01),
                            nn.CrossEntropyLoss(), progress=False)
    assert math.isfinite(stats["loss"]) and stats["samples"] == 64


def test_bn_warmup_averages_the_first_batches_then_restores_momentum():
    # After one step with the warm-up the running mean is that batch's mean (momentum 1), not 0.1 of it; the
    # layer's own momentum is back afterwards, and without the warm-up PyTorch's plain update applies.
    x, y = tensor_data(32)
    for warmup, expected_fraction in ((10, 1.0), (0, 0.1)):
        torch.manual_seed(0)
        model = TinyNet(dropout=0.0)
        bn = model.features[1]
        with torch.no_grad():
            batch_mean = model.features[0](x).mean(dim=(0, 2, 3))
        train_one_epoch(model, plain_loader(x, y, 32), torch.optim.SGD(model.parameters(), lr=0.0),
                        nn.CrossEntropyLoss(), progress=False, bn_warmup=warmup)  # settings as keywords
        assert torch.allclose(bn.running_mean, expected_fraction * batch_mean, atol=1e-5)
        assert bn.momentum == 0.1


def test_short_run_evaluates_with_real_batchnorm_statistics():
    # 3 steps of batch 64: with PyTorch's plain momentum the running variance is still mostly the initial 1.0.
    seed_everything(0)
    train, test = synthetic_loaders(n=192, test_n=64, num_classes=4, batch_size=64)
    model = TinyNet()
    fit(model, train, test, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), progress=False)
    assert model.features[1].num_batches_tracked.item() == 3
    assert model.features[1].momentum == 0.1


def test_a_step_the_grad_scaler_skips_does_not_advance_the_schedule():
    # fp16's GradScaler, enabled on the CPU: inf gradients on the second batch make it skip that optimizer step.
    import warnings

    from pytorch_utils.train.schedules import StepSchedule

    x, y = tensor_data(64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    batch = {"i": 0}
    model.register_forward_pre_hook(lambda m, args: batch.__setitem__("i", batch["i"] + 1))
    model[1].weight.register_hook(lambda g: g * float("inf") if batch["i"] == 2 else g)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    applied_lrs = []
    opt.register_step_pre_hook(lambda o, args, kwargs: applied_lrs.append(o.param_groups[0]["lr"]))
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_one_epoch(model, plain_loader(x, y, 16), opt, nn.CrossEntropyLoss(), progress=False,
                              scheduler=StepSchedule([(0, lambda s: 0.1 * (s + 1))]), scaler=scaler, step=0)
        # A user's own per-batch torch scheduler is not stepped for the skipped step either (no torch warning).
        batch["i"] = 0
        user = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        user.interval = "batch"
        train_one_epoch(model, plain_loader(x, y, 16), opt, nn.CrossEntropyLoss(), progress=False, scheduler=user,
                        scaler=scaler)
    assert out["steps"] == 3 and applied_lrs[:3] == pytest.approx([0.1, 0.2, 0.3])  # the skipped step kept 0.2
    assert user.last_epoch == 3
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]


def test_accumulated_batches_equal_one_batch_of_their_size():
    from pytorch_utils.train.schedules import StepSchedule

    x, y = tensor_data(64)

    def train(batch_size, accumulate):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))  # no BatchNorm
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        lrs = []
        opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
        hist = fit(model, plain_loader(x, y, batch_size), None, epochs=2, optimizer=opt, progress=False,
                   scheduler=StepSchedule([(0, lambda s: 0.1 / (s + 1))]), accumulate_steps=accumulate)
        return model, lrs, hist

    small, small_lrs, small_hist = train(8, 4)
    big, big_lrs, big_hist = train(32, 1)
    assert small_lrs == big_lrs == pytest.approx([0.1 / (s + 1) for s in range(4)])  # schedules count steps
    for a, b in zip(small.parameters(), big.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert small_hist[-1]["train_loss"] == pytest.approx(big_hist[-1]["train_loss"], rel=1e-5)


def test_compiled_and_eager_models_warm_up_batchnorm_the_same_way():
    # backend="eager": dynamo wraps the model (``_orig_mod``) and traces it as for inductor, without a C++ build.
    x, y = tensor_data(64)

    def train(compiled):
        torch.manual_seed(0)
        model = TinyNet(dropout=0.0)
        run = torch.compile(model, backend="eager") if compiled else model
        stats = train_one_epoch(run, plain_loader(x, y, 16), torch.optim.SGD(model.parameters(), lr=0.05),
                                nn.CrossEntropyLoss(), progress=False)
        return model.features[1], stats

    (eager, e_stats), (compiled, c_stats) = train(False), train(True)
    assert torch.allclose(eager.running_mean, compiled.running_mean, atol=1e-6)
    assert torch.allclose(eager.running_var, compiled.running_var, atol=1e-6)
    assert c_stats["acc"] == pytest.approx(e_stats["acc"])
    # and the warm-up really ran: 4 steps averaged, not PyTorch's 0.1-momentum decay from var 1
    assert not torch.allclose(eager.running_var, torch.ones_like(eager.running_var), atol=0.2)
