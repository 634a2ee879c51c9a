import warnings

import pytest
import torch

from pytorch_utils.errors import ConfigError, UnknownNameError
from pytorch_utils.train.schedules import (
    ScheduleSpec, StepSchedule, build_schedule, check_spec, linear_one_cycle, phase_schedule,
)

sched = torch.optim.lr_scheduler


def _opt(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _torch_lrs(make, steps, lr=0.1, per=1):
    """The LR torch's scheduler gives at each of ``steps`` steps, stepped every ``per`` steps."""
    opt = _opt(lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "step() before optimizer.step()" note: we only read LRs
        s = make(opt)
        out = []
        for i in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if (i + 1) % per == 0:
                s.step()
    return out


def _ours(spec, steps_per_epoch, epochs, lr=0.1):
    f = build_schedule(spec, _opt(lr), steps_per_epoch, epochs)
    return [f(i) for i in range(steps_per_epoch * epochs)]


SPE, EPOCHS = 5, 12


@pytest.mark.parametrize("spec, make, per", [
    (ScheduleSpec("onecycle", {"max_lr": 0.3, "pct_start": 0.25}),
     lambda o: sched.OneCycleLR(o, 0.3, total_steps=SPE * EPOCHS, pct_start=0.25, cycle_momentum=False), 1),
    (ScheduleSpec("onecycle", {"max_lr": 0.3, "anneal_strategy": "linear", "div_factor": 10}),
     lambda o: sched.OneCycleLR(o, 0.3, total_steps=SPE * EPOCHS, anneal_strategy="linear", div_factor=10,
                                cycle_momentum=False), 1),
    (ScheduleSpec("cosine", {"eta_min": 0.001}), lambda o: sched.CosineAnnealingLR(o, T_max=EPOCHS, eta_min=0.001),
     SPE),
    (ScheduleSpec("cosine", {"T_max": 5}), lambda o: sched.CosineAnnealingLR(o, T_max=5), SPE),
    (ScheduleSpec("cosine_warm_restarts", {"T_0": 4, "eta_min": 1e-4}),
     lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=4, eta_min=1e-4), SPE),
    (ScheduleSpec("cosine_warm_restarts", {"T_0": 2, "T_mult": 2}),
     lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2), SPE),
    (ScheduleSpec("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}),
     lambda o: sched.CyclicLR(o, 0.01, 0.1, step_size_up=2 * SPE, cycle_momentum=False), 1),
    (ScheduleSpec("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 1, "step_size_down": 2,
                             "mode": "triangular2"}),
     lambda o: sched.CyclicLR(o, 0.01, 0.1, step_size_up=SPE, step_size_down=2 * SPE, mode="triangular2",
                              cycle_momentum=False), 1),
    (ScheduleSpec("step", {"step_size": 3, "gamma": 0.5}), lambda o: sched.StepLR(o, 3, gamma=0.5), SPE),
    (ScheduleSpec("cosine_warm_restarts", {"T_0": 4, "warmup_epochs": 3, "warmup_start_lr": 0.01}),
     lambda o: sched.SequentialLR(o, [sched.LinearLR(o, start_factor=0.1, total_iters=3),
                                      sched.CosineAnnealingWarmRestarts(o, T_0=4)], milestones=[3]), SPE),
])
def test_our_schedule_equals_torchs_lr_sequence(spec, make, per):
    ours = _ours(spec, SPE, EPOCHS)
    assert ours == pytest.approx(_torch_lrs(make, SPE * EPOCHS, per=per), rel=1e-9, abs=1e-12)


def _torch_momenta(make, optimizer, steps):
    """The momentum (SGD) or beta1 (Adam) torch's per-step scheduler gives at each of ``steps`` steps."""
    key = "betas" if "betas" in optimizer.defaults else "momentum"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s, out = make(optimizer), []
        for _ in range(steps):
            value = optimizer.param_groups[0][key]
            out.append(value[0] if key == "betas" else value)
            optimizer.step()
            s.step()
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("spec, make", [
    (ScheduleSpec("onecycle", {"max_lr": 0.3, "pct_start": 0.25}),
     lambda o: sched.OneCycleLR(o, 0.3, total_steps=SPE * EPOCHS, pct_start=0.25)),
    (ScheduleSpec("onecycle", {"max_lr": 0.3, "anneal_strategy": "linear", "base_momentum": 0.8,
                               "max_momentum": 0.9}),
     lambda o: sched.OneCycleLR(o, 0.3, total_steps=SPE * EPOCHS, anneal_strategy="linear", base_momentum=0.8,
                                max_momentum=0.9)),
    (ScheduleSpec("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 1, "step_size_down": 2,
                             "mode": "triangular2"}),
     lambda o: sched.CyclicLR(o, 0.01, 0.1, step_size_up=SPE, step_size_down=2 * SPE, mode="triangular2")),
])
def test_cycling_schedules_cycle_the_momentum_as_torch(spec, make, optimizer):
    def new():
        params = [torch.nn.Parameter(torch.zeros(1))]
        return torch.optim.SGD(params, lr=0.1, momentum=0.9) if optimizer == "sgd" else torch.optim.Adam(params)

    ours = build_schedule(spec, new(), SPE, EPOCHS)
    expected = _torch_momenta(make, new(), SPE * EPOCHS)
    assert [ours.momentum(i) for i in range(SPE * EPOCHS)] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert min(expected) < max(expected)  # it does cycle
    off = build_schedule(ScheduleSpec(spec.name, {**spec.params, "cycle_momentum": False}), new(), SPE, EPOCHS)
    assert off.momentum(3) is None and build_schedule(ScheduleSpec("cosine"), new(), SPE, 2).momentum(0) is None


def test_momentum_cycling_needs_an_optimizer_with_momentum():
    adagrad = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="Adagrad does not have: add 'cycle_momentum': False"):
        build_schedule(ScheduleSpec("onecycle", {"max_lr": 0.1}), adagrad, 5, 2)
    plain = build_schedule(ScheduleSpec("onecycle", {"max_lr": 0.1, "cycle_momentum": False}), adagrad, 5, 2)
    assert plain.momentum(0) is None and plain(0) == pytest.approx(0.004)


def test_training_writes_the_cycled_momentum_into_the_optimizer():
    from pytorch_utils.train.loop import train_one_epoch

    model = torch.nn.Linear(4, 2)
    data = [(torch.randn(3, 4), torch.tensor([0, 1, 0])) for _ in range(4)]
    for opt in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(model.parameters())):
        schedule = build_schedule(ScheduleSpec("onecycle", {"max_lr": 0.3, "pct_start": 0.5}), opt, 4, epochs=3)
        train_one_epoch(model, data, opt, torch.nn.CrossEntropyLoss(), scheduler=schedule, step=0)
        group = opt.param_groups[0]  # the last step applied is step 3, on the way up (the peak is step 5)
        momentum = group["betas"][0] if "betas" in group else group["momentum"]
        assert momentum == pytest.approx(schedule.momentum(3)) and group["lr"] == pytest.approx(schedule(3))
        assert schedule.momentum(2) > momentum > schedule.momentum(4) and schedule(2) < group["lr"] < schedule(4)
    assert opt.param_groups[0]["betas"][1] == 0.999  # Adam's beta2 untouched


def test_phases_cycle_the_momentum_and_leave_it_where_the_cycle_ended():
    class P:
        def __init__(self, start, scheduler):
            self.start, self.scheduler = start, scheduler

    phases = [P(1, ScheduleSpec("onecycle", {"max_lr": 0.1})), P(3, ScheduleSpec("cosine", {"lr": 0.01}))]
    f = phase_schedule(phases, steps_per_epoch=5, epochs=4, base_lr=0.1)
    assert f.momentum(0) == pytest.approx(0.95) and f.momentum(9) == pytest.approx(0.95)
    assert min(f.momentum(s) for s in range(10)) == pytest.approx(0.85, abs=0.01)
    assert f.momentum(10) is None  # the cosine phase: the optimizer keeps the 0.95 the cycle ended on
    adagrad = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ConfigError, match="Adagrad"):
        f.check_optimizer(adagrad)


def test_one_cycle_first_peak_last_step():
    lrs = _ours(ScheduleSpec("one_cycle_linear", {"max_lr": 0.02, "min_lr": 0.002, "peak_epoch": 5}), 10, 24)
    assert lrs[0] == pytest.approx(0.002)  # first step: LR_min
    assert max(lrs) == pytest.approx(0.02) and lrs.index(max(lrs)) == 50  # peak at epoch 5 (step 5 * 10)
    assert lrs[-1] == pytest.approx(0.002)  # last step back at LR_min: no annihilation
    assert min(lrs) >= 0.002 - 1e-12
    assert lrs[25] == pytest.approx(0.002 + 0.018 * 0.5)  # linear ramp
    assert all(a < b for a, b in zip(lrs[:50], lrs[1:51]))
    assert all(a > b for a, b in zip(lrs[50:-1], lrs[51:]))


def test_one_cycle_past_its_last_step_stays_at_min_lr():
    f = linear_one_cycle(0.1, 0.01, total_steps=4, peak_step=1)
    assert [f(s) for s in range(6)] == pytest.approx([0.01, 0.1, 0.055, 0.01, 0.01, 0.01])


def test_one_cycle_peak_beyond_short_run_keeps_the_shape():
    lrs = _ours(ScheduleSpec("one_cycle_linear", {"max_lr": 0.1, "min_lr": 0.01, "peak_epoch": 5}), 12, 2)
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.01)
    assert lrs.index(max(lrs)) == 5 and max(lrs) == pytest.approx(0.1)  # 20 % of 24 steps


def test_onecycle_on_a_tiny_run_stays_finite():
    lrs = _ours(ScheduleSpec("onecycle", {"max_lr": 0.1}), 1, 2)  # 2 steps: torch's own divides by zero here
    assert all(0 < lr <= 0.1 for lr in lrs)


def test_lr_param_and_default_base():
    assert _ours(ScheduleSpec("cosine", {"lr": 0.5}), 1, 4)[0] == pytest.approx(0.5)
    assert _ours(ScheduleSpec("constant"), 1, 3, lr=0.07) == pytest.approx([0.07] * 3)


def test_plateau_is_a_torch_scheduler_with_state():
    opt = _opt(0.1)
    plateau = build_schedule(ScheduleSpec("plateau", {"patience": 0, "factor": 0.5}), opt, 5, 4)
    assert isinstance(plateau, sched.ReduceLROnPlateau) and plateau.interval == "plateau"
    plateau.step(1.0)
    plateau.step(1.0)  # no improvement: halved
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_phase_list_is_one_piecewise_function():
    class P:
        def __init__(self, start, end, scheduler=None):
            self.start, self.end, self.scheduler = start, end, scheduler

    phases = [P(1, 2, ScheduleSpec("cosine_warm_restarts", {"lr": 0.1, "T_0": 25})), P(3, 3),
              P(4, 5, ScheduleSpec("cosine", {"lr": 0.05}))]
    f = phase_schedule(phases, steps_per_epoch=2, epochs=5, base_lr=0.5)
    assert isinstance(f, StepSchedule)
    assert f(0) == pytest.approx(0.1) and f(4) == f(5) < f(2) < 0.1  # phase 3 keeps the warm restarts running
    assert f(6) == pytest.approx(0.05) and f(8) == pytest.approx(0.025)  # cosine over epochs 4-5: T_max 2
    late = phase_schedule([P(1, 1), P(2, 3, ScheduleSpec("step", {"step_size": 1}))], 2, 3, base_lr=0.5)
    assert [late(s) for s in range(6)] == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.05, 0.05])
    assert phase_schedule([P(1, 3)], 2, 3, 0.5) is None


def test_unknown_and_missing_params():
    with pytest.raises(UnknownNameError, match="valid schedulers"):
        build_schedule(ScheduleSpec("warp"), _opt(), 5, 4)
    with pytest.raises(ConfigError, match="max_lr"):
        check_spec(ScheduleSpec("one_cycle_linear", {"min_lr": 0.1, "peak_epoch": 1}))
    with pytest.raises(ConfigError, match="warmup_epochs"):
        check_spec(ScheduleSpec("onecycle", {"max_lr": 0.1, "warmup_epochs": 2}))
    with pytest.raises(ConfigError, match=r"no parameter\(s\) \['pct_strat'\]; its parameters: .*pct_start"):
        check_spec(ScheduleSpec("onecycle", {"max_lr": 0.1, "pct_strat": 0.2}))
    with pytest.raises(ConfigError, match="patince"):
        check_spec(ScheduleSpec("plateau", {"patince": 2}))
    check_spec(ScheduleSpec("plateau", {"patience": 2, "factor": 0.5}))
    # Values torch's own schedulers refuse are refused here, before any data is loaded, with torch's reason.
    for name, params, reason in (("onecycle", {"max_lr": 0.1, "anneal_strategy": "cosine"}, "anneal_strategy"),
                                 ("onecycle", {"max_lr": 0.1, "pct_start": 2.0}, "pct_start"),
                                 ("onecycle", {"max_lr": "abc"}, "abc"),
                                 ("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "mode": "triangle"}, "mode"),
                                 ("plateau", {"factor": 1.5}, "Factor")):
        with pytest.raises(ConfigError, match=f"scheduler {name!r} .*{reason}"):
            check_spec(ScheduleSpec(name, params))
    with pytest.raises(ConfigError, match="cycle_momentum must be true or false, got 'false'"):
        check_spec(ScheduleSpec("onecycle", {"max_lr": 0.1, "cycle_momentum": "false"}))
    check_spec(ScheduleSpec("plateau", {"mode": "max"}))
    check_spec(ScheduleSpec("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 15, "mode": "triangular2"}))
    assert build_schedule(None, _opt(), 5, 4) is None
