import pytest
import torch
import torch.nn as nn
from _helpers import TinyNet, plain_loader, synthetic_loaders, tensor_data

from pytorch_utils.errors import ConfigError
from pytorch_utils.train import Callback, TrainConfig, fit
from pytorch_utils.train.callbacks import (
    EarlyStopping,
    Phase,
    PhaseSchedule,
    set_dropout,
    validate_phases,
)
from pytorch_utils.train.mixing import Mixer, SoftTargetCrossEntropy
from pytorch_utils.train.schedules import ScheduleSpec
from pytorch_utils.train.state import History, TrainState
from pytorch_utils.utils import seed_everything

QUIET = TrainConfig(progress=False)


def _state(history=()):
    model = TinyNet()
    return TrainState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=None,
                      train_loader=None, test_loader=None, device=torch.device("cpu"), epochs=100,
                      history=History(history))


def test_early_stopping_stops_at_the_right_epoch():
    accs = [50, 60, 70, 69, 70, 65, 68]  # best 70 at epoch 3; epochs 4..6 do not improve (70 is not > 70)
    es = EarlyStopping(monitor="test_acc", patience=3)
    state = _state()
    es.on_fit_start(state)
    stopped_at = None
    for epoch, acc in enumerate(accs, start=1):
        record = {"epoch": epoch, "test_acc": float(acc)}
        state.epoch = epoch
        es.on_epoch_end(state, record)
        if state.stop:
            stopped_at = epoch
            assert record["early_stop"] is True
            break
    assert stopped_at == 6
    assert "epoch 3" in state.stop_reason


def test_early_stopping_resumes_from_history():
    history = [{"epoch": 1, "test_loss": 1.0}, {"epoch": 2, "test_loss": 1.1}, {"epoch": 3, "test_loss": 1.2}]
    es = EarlyStopping(monitor="test_loss", mode="min", patience=3)
    state = _state(history)
    es.on_fit_start(state)
    assert es.best == 1.0 and es.wait == 2
    es.on_epoch_end(state, {"epoch": 4, "test_loss": 1.05})
    assert state.stop


def test_early_stopping_in_fit_records_it():
    seed_everything(0)
    train, test = synthetic_loaders(n=64, test_n=32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))  # no BatchNorm: with lr 0 nothing moves
    hist = fit(model, train, test, epochs=20, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
               callbacks=[EarlyStopping("test_loss", "min", patience=2)], config=QUIET)
    assert len(hist) == 3 and hist[-1]["early_stop"]  # lr 0: the loss never improves after epoch 1


def test_early_stopping_resume_of_a_stopped_run_trains_no_more_epochs():
    # Patience 2 exhausted at epoch 3 (the run stopped there); the replay must stop before epoch 4 is trained.
    history = [{"epoch": 1, "test_loss": 1.0}, {"epoch": 2, "test_loss": 1.1},
               {"epoch": 3, "test_loss": 1.2, "early_stop": True}]
    es = EarlyStopping(monitor="test_loss", mode="min", patience=2)
    state = _state(history)
    es.on_fit_start(state)
    assert state.stop is True
    assert "did not improve for 2 epochs" in state.stop_reason and "epoch 1" in state.stop_reason
    # One epoch short of the patience: the resumed run goes on.
    state = _state(history[:2])
    es.on_fit_start(state)
    assert not state.stop and state.stop_reason is None


def test_early_stopping_resumed_fit_does_not_train_another_epoch(tmp_path):
    from pytorch_utils.train.checkpoints import CheckpointManager, latest_checkpoint

    def run(resume):
        seed_everything(0)
        train, test = synthetic_loaders(n=64, test_n=32)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))  # no BatchNorm: with lr 0 nothing moves
        return fit(model, train, test, epochs=20, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                   callbacks=[CheckpointManager(tmp_path), EarlyStopping("test_loss", "min", patience=2)],
                   resume=resume, config=QUIET)

    first = run(resume=None)
    assert len(first) == 3 and first[-1]["early_stop"]
    resumed = run(resume=latest_checkpoint(tmp_path))
    assert [r["epoch"] for r in resumed] == [1, 2, 3]  # no epoch 4


def test_early_stopping_start_epoch_ignores_earlier_epochs():
    es = EarlyStopping(monitor="test_acc", patience=2, start_epoch=5)
    state = _state()
    es.on_fit_start(state)
    accs = [60, 50, 40, 30, 20, 25, 24, 23]  # worse every epoch before 5; best 25 at epoch 6 counts from epoch 5
    stopped_at = None
    for epoch, acc in enumerate(accs, start=1):
        record = {"epoch": epoch, "test_acc": float(acc)}
        es.on_epoch_end(state, record)
        if epoch < 5:
            assert not state.stop and "early_stop" not in record and es.best is None and es.wait == 0
        if state.stop:
            stopped_at = epoch
            break
    assert stopped_at == 8  # epochs 7 and 8 do not beat 25 (epoch 6)
    assert "epoch 6" in state.stop_reason

    # Without start_epoch the same metric stops at epoch 3.
    es, state = EarlyStopping(monitor="test_acc", patience=2), _state()
    es.on_fit_start(state)
    for epoch, acc in enumerate(accs, start=1):
        es.on_epoch_end(state, {"epoch": epoch, "test_acc": float(acc)})
        if state.stop:
            break
    assert epoch == 3


@pytest.mark.parametrize("start_epoch", [None, 1])
def test_early_stopping_start_epoch_default_counts_every_epoch(start_epoch):
    es = EarlyStopping(monitor="test_loss", mode="min", patience=1, start_epoch=start_epoch)
    state = _state()
    es.on_fit_start(state)
    es.on_epoch_end(state, {"epoch": 1, "test_loss": 1.0})
    es.on_epoch_end(state, {"epoch": 2, "test_loss": 2.0})
    assert state.stop


def test_early_stopping_start_epoch_replay_matches_an_uninterrupted_run():
    losses = [1.0, 2.0, 3.0, 4.0, 1.5, 1.4, 1.6, 1.7, 1.8]
    records = [{"epoch": e, "test_loss": v} for e, v in enumerate(losses, start=1)]

    def uninterrupted():
        es, state = EarlyStopping("test_loss", "min", patience=3, start_epoch=5), _state()
        es.on_fit_start(state)
        for rec in records:
            es.on_epoch_end(state, dict(rec))
            if state.stop:
                return rec["epoch"], (es.best, es.best_epoch, es.wait)
        return None, (es.best, es.best_epoch, es.wait)

    stop_epoch, final = uninterrupted()
    assert stop_epoch == 9 and final == (1.4, 6, 3)
    for cut in range(len(records)):  # resume after every possible epoch
        es, state = EarlyStopping("test_loss", "min", patience=3, start_epoch=5), _state(records[:cut])
        es.on_fit_start(state)
        assert not state.stop
        for rec in records[cut:]:
            es.on_epoch_end(state, dict(rec))
            if state.stop:
                break
        assert rec["epoch"] == stop_epoch and (es.best, es.best_epoch, es.wait) == final
    # Resuming after the stop: stopped at once, before any epoch.
    es, state = EarlyStopping("test_loss", "min", patience=3, start_epoch=5), _state(records)
    es.on_fit_start(state)
    assert state.stop and "epoch 6" in state.stop_reason


def test_early_stopping_needs_the_metric():
    es = EarlyStopping(monitor="test_acc")
    with pytest.raises(ConfigError, match="test_acc"):
        es.on_epoch_end(_state(), {"epoch": 1, "train_loss": 1.0})


class Probe(Callback):
    """Records what the engine has in force at the start of each epoch."""

    def __init__(self):
        self.seen = []

    def on_epoch_start(self, state):
        drop = next(m for m in state.model.modules() if isinstance(m, nn.Dropout))
        self.seen.append({"epoch": state.epoch + 1, "p": drop.p, "mixup": state.mixer.mixup_alpha,
                          "cutmix": state.mixer.cutmix_alpha, "transform": state.train_loader.dataset.transform,
                          "lr": state.scheduler(state.step), "scheduler": type(state.scheduler).__name__})


def test_phase_boundaries_change_dropout_mixup_augmentation_and_scheduler():
    seed_everything(0)
    train, test = synthetic_loaders(n=64, test_n=32)
    phases = [Phase(1, 2, "one", dropout=0.3, augmentation="standard", mixup_alpha=0.2,
                    scheduler=ScheduleSpec("cosine_warm_restarts", {"lr": 0.1, "T_0": 25})),
              Phase(3, 3, "two", dropout=0.2, augmentation="reduced", mixup_alpha=0.15,
                    scheduler=ScheduleSpec("cosine", {"lr": 0.05})),
              Phase(4, 4, "three", cutmix_alpha=1.0, input_size=40)]
    probe = Probe()
    model = TinyNet()
    hist = fit(model, train, test, epochs=4, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
               criterion=SoftTargetCrossEntropy(), callbacks=[PhaseSchedule(phases), probe],
               config=TrainConfig(mixer=Mixer(4), progress=False))
    s = probe.seen
    assert [x["p"] for x in s] == [0.3, 0.3, 0.2, 0.2]
    assert [x["mixup"] for x in s] == [0.2, 0.2, 0.15, 0.15]
    assert [x["cutmix"] for x in s] == [0.0, 0.0, 0.0, 1.0]
    assert s[0]["transform"] is s[1]["transform"] and s[2]["transform"] is not s[1]["transform"]
    assert s[0]["lr"] == pytest.approx(0.1) and s[2]["lr"] == pytest.approx(0.05)
    assert [x["scheduler"] for x in s] == ["StepSchedule"] * 4  # the phases' schedules: one piecewise function
    assert s[1]["lr"] < s[0]["lr"] and s[3]["lr"] < s[2]["lr"]  # warm restarts, then cosine from 0.05
    assert [r["phase"] for r in hist] == ["one", "one", "two", "three"]
    # the augmentation really changes: "standard" has the 8x8 Cutout, "reduced" none
    names = lambda t: [type(a).__name__ for a in t.compose.transforms]  # noqa: E731
    assert "CoarseDropout" in names(s[0]["transform"]) and "CoarseDropout" not in names(s[2]["transform"])
    # progressive resizing: phase three trains at 40x40 while evaluation stays at 32x32
    x, _ = next(iter(train))
    assert x.shape[-1] == 40
    x_test, _ = next(iter(test))
    assert x_test.shape[-2:] == (32, 32)


def test_validate_phases_rejects_gaps_plateau_and_a_peak_past_the_span():
    with pytest.raises(ConfigError, match="contiguous"):
        validate_phases([Phase(1, 5), Phase(7, 10)])
    with pytest.raises(ConfigError, match="contiguous"):
        validate_phases([Phase(2, 5)])
    with pytest.raises(ConfigError, match="at least one phase"):
        validate_phases([])
    with pytest.raises(ConfigError, match="phase b: a plateau scheduler"):
        validate_phases([Phase(1, 2, "a"), Phase(3, 4, "b", scheduler=ScheduleSpec("plateau"))])
    # A schedule runs until the next phase that declares one: phase a's spans epochs 1-3, so a peak at 3 is too late.
    peak = {"max_lr": 0.1, "min_lr": 0.01, "peak_epoch": 3}
    with pytest.raises(ConfigError, match="phase a: scheduler 'one_cycle_linear': peak_epoch 3 must be below the 3"):
        validate_phases([Phase(1, 2, "a", scheduler=ScheduleSpec("one_cycle_linear", peak)), Phase(3, 3, "b"),
                         Phase(4, 6, "c", scheduler=ScheduleSpec("cosine"))])
    with pytest.raises(ConfigError, match=r"phase 1: scheduler 'cosine' has no parameter\(s\) \['T_mx'\]"):
        validate_phases([{"start": 1, "end": 2, "scheduler": {"name": "cosine", "params": {"T_mx": 2}}}])
    phases = validate_phases([{"start": 1, "end": 2, "scheduler": {"name": "cosine"}}, {"start": 3, "end": 4}])
    assert isinstance(phases[0], Phase) and phases[0].scheduler == ScheduleSpec("cosine")  # dicts become specs


@pytest.mark.parametrize("field, value", [("dropout", 1.0), ("dropout", -0.1), ("input_size", 4),
                                          ("input_size", 4096), ("mixup_alpha", -1.0), ("cutmix_alpha", float("nan")),
                                          ("start", 0)])
def test_phase_checks_its_fields_when_built(field, value):
    with pytest.raises(ConfigError, match=field):
        Phase(**{"start": 1, "end": 2, field: value})


def test_phase_mixup_without_mixer_is_an_error():
    seed_everything(0)
    train, _ = synthetic_loaders(n=64, test_n=32)
    model = TinyNet()
    with pytest.raises(ConfigError, match="mixer"):
        fit(model, train, None, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            callbacks=[PhaseSchedule([Phase(1, 1, mixup_alpha=0.2)])], config=QUIET)


def test_set_dropout():
    model = TinyNet()
    assert set_dropout(model, 0.4) == 1
    assert model.features[3].p == 0.4 and set_dropout(nn.Linear(2, 2), 0.4) == 0


def _phase_lrs(phases, epochs):
    """The LR at the first step of each epoch of a ``fit`` over 2 batches per epoch, and the history."""
    x, y = tensor_data(32)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    lrs = []
    opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
    hist = fit(model, plain_loader(x, y, 16), None, epochs=epochs, optimizer=opt, callbacks=[PhaseSchedule(phases)],
               config=QUIET)
    return lrs[::2], hist


def test_the_last_phase_runs_to_the_end_of_a_longer_run_and_a_shorter_run_trains_the_first_epochs():
    import math

    cosine = ScheduleSpec("cosine", {"lr": 0.1})
    lrs, hist = _phase_lrs([Phase(1, 2, "a", dropout=0.2, scheduler=cosine)], epochs=4)
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 4)) for t in range(4)])  # shaped for 4 epochs
    assert [r["phase"] for r in hist] == ["a"] * 4
    lrs, hist = _phase_lrs([Phase(1, 3, "a", scheduler=cosine),
                            Phase(4, 60, "b", scheduler=ScheduleSpec("constant", {"lr": 0.01}))], epochs=2)
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 3)) for t in range(2)])  # phase a's first 2
    assert [r["phase"] for r in hist] == ["a", "a"]


def test_a_phase_that_resizes_needs_a_loader_that_can():
    x, y = tensor_data(32)
    model = TinyNet()
    with pytest.raises(ConfigError, match=r"no set_augmentation\(\); build it with make_loader"):
        fit(model, plain_loader(x, y, 16), None, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            callbacks=[PhaseSchedule([Phase(1, 1, input_size=40)])], config=QUIET)
