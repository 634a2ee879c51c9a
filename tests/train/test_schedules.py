import pytest
import torch

from pytorch_utils.errors import ConfigError, UnknownNameError
from pytorch_utils.train.schedules import LinearOneCycleLR, ScheduleSpec, build_scheduler


def _opt(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_one_cycle_first_peak_last_step():
    steps_per_epoch, epochs = 10, 24
    opt = _opt()
    sched = build_scheduler(ScheduleSpec("one_cycle_linear", {"max_lr": 0.02, "min_lr": 0.002, "peak_epoch": 5}),
                            opt, steps_per_epoch, epochs)
    assert sched.interval == "batch"
    lrs = _lrs(sched, opt, steps_per_epoch * epochs)
    assert lrs[0] == pytest.approx(0.002)  # first step: LR_min
    assert lrs[50] == pytest.approx(0.02)  # peak at epoch 5 (step 5 * 10)
    assert max(lrs) == pytest.approx(0.02) and lrs.index(max(lrs)) == 50
    assert lrs[-1] == pytest.approx(0.002)  # last step back at LR_min: no annihilation
    assert min(lrs) >= 0.002 - 1e-12
    assert lrs[25] == pytest.approx(0.002 + 0.018 * 0.5)  # linear ramp
    # strictly increasing then decreasing
    assert all(a < b for a, b in zip(lrs[:50], lrs[1:51]))
    assert all(a > b for a, b in zip(lrs[50:-1], lrs[51:]))


def test_one_cycle_overstep_raises_clear_error():
    opt = _opt()
    sched = LinearOneCycleLR(opt, max_lr=0.1, min_lr=0.01, total_steps=4, peak_step=1)
    for _ in range(4):  # the engine steps once after the last batch: allowed
        opt.step()
        sched.step()
    with pytest.raises(ConfigError, match="built for 4 steps"):
        sched.step()


@pytest.mark.parametrize("kw", [dict(max_lr=0.1, min_lr=0.2), dict(max_lr=0.1, min_lr=0.0),
                                dict(max_lr=0.1, min_lr=0.01, peak_step=10)])
def test_one_cycle_bad_args(kw):
    kw = {"total_steps": 10, "peak_step": 2, **kw}
    with pytest.raises(ConfigError):
        LinearOneCycleLR(_opt(), **kw)


@pytest.mark.parametrize("spec,interval", [
    (ScheduleSpec("cosine", {"eta_min": 0.0}), "epoch"),
    (ScheduleSpec("cosine_warm_restarts", {"T_0": 2}), "epoch"),
    (ScheduleSpec("plateau", {"patience": 1}), "plateau"),
    (ScheduleSpec("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 1}), "batch"),
    (ScheduleSpec("onecycle", {"max_lr": 0.1}), "batch"),
    (ScheduleSpec("step", {"step_size": 2, "gamma": 0.5}), "epoch"),
])
def test_build_scheduler_intervals(spec, interval):
    sched = build_scheduler(spec, _opt(), steps_per_epoch=5, epochs=4)
    assert sched.interval == interval


def test_cosine_reaches_eta_min_and_restarts():
    opt = _opt(0.1)
    sched = build_scheduler(ScheduleSpec("cosine", {"eta_min": 0.0}), opt, 5, 4)
    lrs = _lrs(sched, opt, 5)
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.0, abs=1e-12)
    opt = _opt(0.1)
    sched = build_scheduler(ScheduleSpec("cosine_warm_restarts", {"T_0": 2}), opt, 5, 6)
    lrs = _lrs(sched, opt, 5)
    assert lrs[0] == lrs[2] == lrs[4] == pytest.approx(0.1) and lrs[1] < 0.1


def test_warmup_then_schedule_and_lr_param():
    opt = _opt(0.5)
    sched = build_scheduler(ScheduleSpec("cosine_warm_restarts", {"lr": 0.1, "T_0": 25, "warmup_epochs": 5,
                                                                  "warmup_start_lr": 0.01}), opt, 10, 60)
    lrs = _lrs(sched, opt, 7)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6]))


def test_plateau_steps_with_metric_only():
    opt = _opt(0.1)
    sched = build_scheduler(ScheduleSpec("plateau", {"patience": 0, "factor": 0.5}), opt, 5, 4)
    sched.step(1.0)
    sched.step(1.0)  # no improvement: halved
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_unknown_and_missing_params():
    with pytest.raises(UnknownNameError, match="valid schedulers"):
        build_scheduler(ScheduleSpec("warp"), _opt(), 5, 4)
    with pytest.raises(ConfigError, match="max_lr"):
        build_scheduler(ScheduleSpec("one_cycle_linear", {"min_lr": 0.1, "peak_epoch": 1}), _opt(), 5, 4)
    assert build_scheduler(ScheduleSpec("constant"), _opt(), 5, 4) is None
    assert build_scheduler(None, _opt(), 5, 4) is None


def test_one_cycle_peak_beyond_short_run_keeps_the_shape():
    opt = _opt()
    with pytest.warns(RuntimeWarning, match="peak_epoch 5"):
        sched = build_scheduler(ScheduleSpec("one_cycle_linear", {"max_lr": 0.1, "min_lr": 0.01, "peak_epoch": 5}),
                                opt, 12, 2)
    lrs = _lrs(sched, opt, 24)
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.01)
    assert lrs.index(max(lrs)) == 5 and max(lrs) == pytest.approx(0.1)  # round(5/24 * 24)
