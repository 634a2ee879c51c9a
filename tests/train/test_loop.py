import logging
import math
import sys

import pytest
import torch
import torch.nn as nn
from _helpers import TinyNet, plain_loader, synthetic_loaders, tensor_data

from pytorch_utils.errors import ConfigError, NonFiniteLossError
from pytorch_utils.models import create_model
from pytorch_utils.train import Callback, TrainConfig, evaluate, fit, train_one_epoch
from pytorch_utils.train.checkpoints import CheckpointManager, load_checkpoint
from pytorch_utils.train.loop import format_record
from pytorch_utils.train.mixing import Mixer, SoftTargetCrossEntropy
from pytorch_utils.train.schedules import StepSchedule
from pytorch_utils.train.state import History
from pytorch_utils.utils import seed_everything

QUIET = TrainConfig(progress=False)


def test_two_epochs_on_synthetic_beat_chance_by_far():
    seed_everything(0)
    train, test = synthetic_loaders(n=1000, test_n=300, num_classes=10, batch_size=64, augmentation="standard")
    model = create_model("strixbee_l1", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hist = fit(model, train, test, epochs=2, optimizer=opt, config=QUIET)
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
        train_one_epoch(model, plain_loader(x, y, 16), opt, nn.CrossEntropyLoss(), QUIET, epoch=1)


class RecordingSchedule:
    """A schedule of the engine's protocol: ``apply(optimizer, step)`` before each optimizer step."""

    def __init__(self):
        self.steps = []

    def apply(self, optimizer, step):
        self.steps.append(step)
        for group in optimizer.param_groups:
            group["lr"] = 0.1 / (step + 1)


class RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    def __init__(self, optimizer):
        super().__init__(optimizer)
        self.metrics = []

    def step(self, metrics):
        self.metrics.append(float(metrics))
        super().step(metrics)


def test_fit_applies_a_schedule_at_every_optimizer_step_and_a_plateau_once_per_epoch_on_the_test_loss():
    x, y = tensor_data(64)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = RecordingSchedule()
    hist = fit(model, plain_loader(x, y, 16), plain_loader(x, y, 32), epochs=3, optimizer=opt, scheduler=schedule,
               config=QUIET)
    assert schedule.steps == list(range(12))  # 3 epochs of 4 steps, counted over the run
    assert [r["lr"] for r in hist] == pytest.approx([0.1 / 4, 0.1 / 8, 0.1 / 12])  # the LR of each epoch's last step
    plateau = RecordingPlateau(opt)
    hist = fit(model, plain_loader(x, y, 16), plain_loader(x, y, 32), epochs=3, optimizer=opt, scheduler=plateau,
               config=QUIET)
    assert plateau.metrics == pytest.approx([r["test_loss"] for r in hist])
    plateau = RecordingPlateau(opt)  # without a test loader: the train loss
    hist = fit(model, plain_loader(x, y, 16), None, epochs=2, optimizer=opt, scheduler=plateau, config=QUIET)
    assert plateau.metrics == pytest.approx([r["train_loss"] for r in hist])


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
               callbacks=[Probe()], config=QUIET)
    assert seen == [(1, 1), (2, 2)] and len(hist) == 2 and "test_acc" not in hist[0]


def test_fit_logs_lines_and_validates(caplog):
    x, y = tensor_data(32)
    model = TinyNet()
    with caplog.at_level(logging.INFO, logger="pytorch_utils.train.loop"):
        fit(model, plain_loader(x, y, 16), plain_loader(x, y, 16), epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=QUIET)
    lines = [r.getMessage() for r in caplog.records if r.name == "pytorch_utils.train.loop"]
    assert len(lines) == 1 and lines[0].startswith("epoch   1")
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        fit(model, plain_loader(x, y, 16), None, epochs=0, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_amp_bf16_on_cpu_runs_and_fp16_on_cpu_is_refused():
    x, y = tensor_data(32)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = fit(model, plain_loader(x, y, 16), plain_loader(x, y, 16), epochs=1, optimizer=opt,
               config=TrainConfig(amp="bf16", progress=False))
    assert math.isfinite(hist[0]["train_loss"])
    with pytest.raises(ConfigError, match="fp16"):
        fit(model, plain_loader(x, y, 16), None, epochs=1, optimizer=opt, config=TrainConfig(amp="fp16"))


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
                            nn.CrossEntropyLoss(), QUIET)
    assert math.isfinite(stats["loss"]) and stats["samples"] == 64


def test_a_step_the_grad_scaler_skips_does_not_advance_the_schedule():
    # fp16's GradScaler, enabled on the CPU: inf gradients on the second batch make it skip that optimizer step.
    import warnings

    from pytorch_utils.train.schedules import TorchSchedule

    x, y = tensor_data(64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    batch = {"i": 0}
    model.register_forward_pre_hook(lambda m, args: batch.__setitem__("i", batch["i"] + 1))
    model[1].weight.register_hook(lambda g: g * float("inf") if batch["i"] == 2 else g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    applied_lrs = []
    opt.register_step_pre_hook(lambda o, args, kwargs: applied_lrs.append(o.param_groups[0]["lr"]))
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_one_epoch(model, plain_loader(x, y, 16), opt, nn.CrossEntropyLoss(), QUIET, scaler=scaler,
                              schedule=StepSchedule([(0, lambda s: 0.1 * (s + 1), None)], 4), step=0)
        # A user's own per-batch torch scheduler is not stepped for the skipped step either (no torch warning).
        batch["i"], opt.param_groups[0]["lr"] = 0, 0.1
        user = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s + 1.0)  # initial_lr 0.1: 0.1, 0.2, 0.3, ...
        train_one_epoch(model, plain_loader(x, y, 16), opt, nn.CrossEntropyLoss(), QUIET, scaler=scaler,
                        schedule=TorchSchedule(user, per_step=True), step=0)
    assert out["steps"] == 3 and applied_lrs[:3] == pytest.approx([0.1, 0.2, 0.3])  # the skipped step kept 0.2
    assert applied_lrs[3:] == pytest.approx([0.1, 0.2, 0.3])
    assert user.last_epoch == 2  # stepped to the last applied step (step 2), not once more for the skipped one
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]


def test_accumulated_batches_equal_one_batch_of_their_size():
    x, y = tensor_data(64)

    def train(batch_size, accumulate):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))  # no BatchNorm
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        lrs = []
        opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
        hist = fit(model, plain_loader(x, y, batch_size), None, epochs=2, optimizer=opt,
                   scheduler=StepSchedule([(0, lambda s: 0.1 / (s + 1), None)], 4),
                   config=TrainConfig(accumulate_steps=accumulate, progress=False))
        return model, lrs, hist

    small, small_lrs, small_hist = train(8, 4)
    big, big_lrs, big_hist = train(32, 1)
    assert small_lrs == big_lrs == pytest.approx([0.1 / (s + 1) for s in range(4)])  # schedules count steps
    for a, b in zip(small.parameters(), big.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert small_hist[-1]["train_loss"] == pytest.approx(big_hist[-1]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("grad_clip", -1.0, "grad_clip"), ("grad_clip", float("nan"), "grad_clip"), ("accumulate_steps", 0, "accumulate"),
    ("sync_every", 0, "sync_every"), ("amp", "fp32", "amp"),
])
def test_train_config_refuses_values_that_would_train_wrongly(field, value, message):
    # Issue 19: grad_clip=-1 was accepted and reversed every gradient; TrainConfig is the door of a user's own code.
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("bad, mixed", [(7, False), (-1, True)])
def test_labels_outside_the_head_in_any_batch_stop_the_epoch_before_the_loss_sees_them(bad, mixed):
    # Issue 21: only batch 1 was checked; a bad label later reached the loss (or the mixer's one-hot): torch's own
    # error on the CPU, a device assert that ends the process on a GPU.
    x, y = tensor_data(64, num_classes=4)
    y[50] = bad  # in the last of 4 batches
    low, high = int(y.min()), int(y.max())
    model = TinyNet(num_classes=4)
    config = TrainConfig(progress=False, mixer=Mixer(4, mixup_alpha=1.0) if mixed else None)
    expected = rf"labels range over \[{low}, {high}\] \(%sthe model has 4 classes: 0\.\.3\); "
    # a label below 0 is no sign of a small head: the advice is then to fix the labels alone
    expected += rf"build the model with num_classes={high + 1} or more, or fix the labels$" if bad > 0 else \
        r"fix the labels \(class indices start at 0\)$"
    with pytest.raises(ConfigError, match="^train " + expected % "epoch 3, "):
        train_one_epoch(model, plain_loader(x, y, 16), torch.optim.SGD(model.parameters(), lr=0.1),
                        SoftTargetCrossEntropy() if mixed else nn.CrossEntropyLoss(), config, epoch=3)
    with pytest.raises(ConfigError, match="^test " + expected % ""):
        evaluate(model, plain_loader(x, y, 16))


def test_labels_are_checked_without_a_host_read_per_step(monkeypatch):
    x, y = tensor_data(128)
    model = TinyNet()
    reads = []

    def counted(real):
        def read(tensor):
            if "pytorch_utils" in sys._getframe(1).f_code.co_filename:  # the package's reads, not the DataLoader's
                reads.append(real.__name__)
            return real(tensor)
        return read

    for name in ("item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    train_one_epoch(model, plain_loader(x, y, 8), torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                    QUIET, epoch=1)
    assert reads == ["tolist", "tolist"]  # 16 steps: the flags and the sums, each read once at the end of the epoch


@pytest.mark.parametrize("what", ["test_loss", "weight"])
def test_a_nan_test_loss_or_weight_stops_the_run_and_that_epoch_is_never_saved(tmp_path, what):
    # Issue 21: only a NaN train loss was caught; diverged epochs were saved as the newest checkpoints.
    train, test = synthetic_loaders(n=64, test_n=32)
    model, poisoned = TinyNet(), []

    def test_criterion(logits, targets):
        loss = nn.functional.cross_entropy(logits, targets)
        return loss * float("nan") if poisoned else loss

    class Diverge(Callback):
        def on_epoch_start(self, state):
            if state.epoch + 1 == 2:
                poisoned.append(True)
                if what == "weight":  # the train loss stays finite (batch statistics), the saved state would not
                    state.model.features[1].running_var.fill_(float("nan"))

    message = "a weight" if what == "weight" else r"the test loss \(nan\)"
    with pytest.raises(NonFiniteLossError, match=rf"^{message} became NaN/inf in epoch 2; stopped before saving it"):
        fit(model, train, test if what == "test_loss" else None, epochs=3,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), callbacks=[
                CheckpointManager(tmp_path, monitor="train_loss", mode="min"), Diverge()],
            config=TrainConfig(progress=False, eval_criterion=test_criterion))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch-0001.pt"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1 and all(v.isfinite().all() for v in best["model"].values() if v.is_floating_point())
