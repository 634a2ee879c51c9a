import warnings

import pytest
import torch
from _helpers import TinyNet, plain_loader, tensor_data

from pytorch_utils.errors import ConfigError, UnknownNameError
from pytorch_utils.train import TrainConfig, fit
from pytorch_utils.train.schedules import (
    SCHEDULES,
    ScheduleSpec,
    StepSchedule,
    TorchSchedule,
    as_schedule,
    build_schedule,
    check_length,
    check_spec,
    follows_run_length,
    linear_one_cycle,
    phase_schedule,
    with_found_lrs,
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
        train_one_epoch(model, data, opt, torch.nn.CrossEntropyLoss(), schedule=schedule, step=0)
        group = opt.param_groups[0]  # the last step applied is step 3, on the way up (the peak is step 5)
        momentum = group["betas"][0] if "betas" in group else group["momentum"]
        assert momentum == pytest.approx(schedule.momentum(3)) and group["lr"] == pytest.approx(schedule(3))
        assert schedule.momentum(2) > momentum > schedule.momentum(4) and schedule(2) < group["lr"] < schedule(4)
    assert opt.param_groups[0]["betas"][1] == 0.999  # Adam's beta2 untouched


def test_phases_cycle_the_momentum_and_leave_it_where_the_cycle_ended():
    phases = [P(1, 2, ScheduleSpec("onecycle", {"max_lr": 0.1})), P(3, 4, ScheduleSpec("cosine", {"lr": 0.01}))]
    f = phase_schedule(phases, steps_per_epoch=5, base_lr=0.1)
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


def test_one_cycle_peak_not_below_the_run_is_refused():
    spec = ScheduleSpec("one_cycle_linear", {"max_lr": 0.1, "min_lr": 0.01, "peak_epoch": 5})
    for epochs in (2, 5):  # the peak must fall inside the run: no silent reshaping for short runs
        with pytest.raises(ConfigError, match=f"peak_epoch 5 must be below the {epochs} epochs it runs for"):
            build_schedule(spec, _opt(), 12, epochs)
    check_spec(spec)  # without a span (a recipe's spec before its length is known) it is fine
    assert max(_ours(spec, 2, 6)) == pytest.approx(0.1)


def test_onecycle_on_a_tiny_run_stays_finite():
    lrs = _ours(ScheduleSpec("onecycle", {"max_lr": 0.1}), 1, 2)  # 2 steps: torch's own divides by zero here
    assert all(0 < lr <= 0.1 for lr in lrs)


def test_lr_param_and_default_base():
    assert _ours(ScheduleSpec("cosine", {"lr": 0.5}), 1, 4)[0] == pytest.approx(0.5)
    assert _ours(ScheduleSpec("constant"), 1, 3, lr=0.07) == pytest.approx([0.07] * 3)


def test_plateau_is_a_torch_scheduler_with_state():
    opt = _opt(0.1)
    plateau = build_schedule(ScheduleSpec("plateau", {"patience": 0, "factor": 0.5}), opt, 5, 4)
    assert isinstance(plateau, sched.ReduceLROnPlateau)
    plateau.step(1.0)
    plateau.step(1.0)  # no improvement: halved
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    opt = _opt(0.1)  # its "lr" (what an LR finder fills) is written into the optimizer: the run starts there
    build_schedule(ScheduleSpec("plateau", {"lr": 0.3}), opt, 5, 4)
    assert opt.param_groups[0]["lr"] == opt.param_groups[0]["initial_lr"] == 0.3


class P:
    """What phase_schedule reads of a Phase (the phase checks are tested in test_callbacks)."""

    def __init__(self, start, end, scheduler=None):
        self.start, self.end, self.scheduler = start, end, scheduler


def test_phase_list_is_one_piecewise_function():
    phases = [P(1, 2, ScheduleSpec("cosine_warm_restarts", {"lr": 0.1, "T_0": 25})), P(3, 3),
              P(4, 5, ScheduleSpec("cosine", {"lr": 0.05}))]
    f = phase_schedule(phases, steps_per_epoch=2, base_lr=0.5)
    assert isinstance(f, StepSchedule) and f.total_steps == 10  # the last phase's end is the length
    assert f(0) == pytest.approx(0.1) and f(4) == f(5) < f(2) < 0.1  # phase 3 keeps the warm restarts running
    assert f(6) == pytest.approx(0.05) and f(8) == pytest.approx(0.025)  # cosine over epochs 4-5: T_max 2
    late = phase_schedule([P(1, 1), P(2, 3, ScheduleSpec("step", {"step_size": 1}))], 2, base_lr=0.5)
    assert [late(s) for s in range(6)] == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.05, 0.05])
    assert phase_schedule([P(1, 3)], 2, 0.5) is None


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
        with pytest.raises(ConfigError, match=f"scheduler {name!r}.*{reason}"):
            check_spec(ScheduleSpec(name, params))
    with pytest.raises(ConfigError, match="cycle_momentum 'false' must be true or false"):
        check_spec(ScheduleSpec("onecycle", {"max_lr": 0.1, "cycle_momentum": "false"}))
    check_spec(ScheduleSpec("plateau", {"mode": "max"}))
    check_spec(ScheduleSpec("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 15, "mode": "triangular2"}))
    assert build_schedule(None, _opt(), 5, 4) is None


# Minimal parameters of each registry entry besides those an LR finder fills.
OWN_PARAMS = {"step": {"step_size": 2}, "cosine_warm_restarts": {"T_0": 2}, "one_cycle_linear": {"peak_epoch": 1}}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_takes_the_lrs_an_lr_finder_found(name):
    # Issue 19: plateau/cosine/step/constant schedules dropped the finder's LR and trained at the optimizer's.
    spec = with_found_lrs(ScheduleSpec(name, OWN_PARAMS.get(name, {})), 0.1, 0.01)
    check_spec(spec, span=4)
    opt = _opt(0.05)
    schedule = build_schedule(spec, opt, 5, 4)
    if name == "plateau":
        assert opt.param_groups[0]["lr"] == 0.1
    else:
        lrs = [schedule(s) for s in range(20)]
        assert max(lrs) == pytest.approx(0.1)  # the found LR_max is the peak (or the start) of every schedule
        if name in ("constant", "step", "cosine", "cosine_warm_restarts"):
            assert lrs[0] == pytest.approx(0.1)  # these start at it
    assert with_found_lrs(None, 0.1, 0.01) is None
    assert with_found_lrs(ScheduleSpec(name, {"T_0": 2}), 0.1, 0.01).params["T_0"] == 2  # its own params are kept


def test_the_finder_fills_what_each_entry_names():
    assert with_found_lrs(ScheduleSpec("cyclic"), 0.1, 0.01).params == {"max_lr": 0.1, "base_lr": 0.01}
    assert with_found_lrs(ScheduleSpec("one_cycle_linear", {"peak_epoch": 2}), 0.1, 0.01).params == {
        "peak_epoch": 2, "max_lr": 0.1, "min_lr": 0.01}
    assert with_found_lrs(ScheduleSpec("plateau", {"lr": 0.5, "patience": 3}), 0.1, 0.01).params == {
        "lr": 0.1, "patience": 3}


def test_follows_run_length():
    assert follows_run_length(ScheduleSpec("onecycle", {"max_lr": 0.1}))
    assert follows_run_length(ScheduleSpec("one_cycle_linear", {"max_lr": 0.1, "min_lr": 0.01, "peak_epoch": 2}))
    assert follows_run_length(ScheduleSpec("cosine")) and not follows_run_length(ScheduleSpec("cosine", {"T_max": 5}))
    assert follows_run_length(ScheduleSpec("cyclic", {"base_lr": 0.01, "max_lr": 0.1}))
    assert not follows_run_length(ScheduleSpec("cyclic", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}))
    for spec in (ScheduleSpec("constant"), ScheduleSpec("step", {"step_size": 2}), ScheduleSpec("plateau"), None):
        assert not follows_run_length(spec)


def test_check_length_refuses_a_schedule_shorter_than_its_run():
    schedule = build_schedule(ScheduleSpec("onecycle", {"max_lr": 0.1}), _opt(), 6, 3)  # 18 steps
    assert schedule.total_steps == 18
    with pytest.raises(ConfigError, match=r"built for 18 optimizer steps but the run takes 21"):
        check_length(schedule, 21)
    check_length(schedule, 18)
    check_length(schedule, 12)  # a longer schedule is a run stopped early: fine
    check_length(None, 21)


def test_as_schedule_adapts_what_fit_is_given():
    opt = _opt()
    assert isinstance(as_schedule(ScheduleSpec("cosine"), opt, 5, 2), StepSchedule)
    assert as_schedule({"name": "step", "params": {"step_size": 1}}, opt, 5, 2).total_steps == 10
    assert as_schedule(None, opt, 5, 2) is None
    per_step = as_schedule(sched.OneCycleLR(opt, 0.1, total_steps=10), opt, 5, 2)
    per_epoch = as_schedule(sched.StepLR(opt, 1), opt, 5, 2)
    assert isinstance(per_step, TorchSchedule) and per_step.every == 1
    assert isinstance(per_epoch, TorchSchedule) and per_epoch.every == 5
    plateau = sched.ReduceLROnPlateau(opt)
    assert as_schedule(plateau, opt, 5, 2) is plateau
    own = StepSchedule([(0, lambda s: 0.1, None)], 10)
    assert as_schedule(own, opt, 5, 2) is own


def test_torch_schedule_steps_the_users_scheduler_to_the_applied_step():
    opt = _opt(1.0)
    adapter = TorchSchedule(sched.LambdaLR(opt, lambda s: 1.0 / (s + 1)), per_step=False, steps_per_epoch=3)
    lrs = []
    for step in range(9):
        adapter.apply(opt, step)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
    assert lrs == pytest.approx([1.0] * 3 + [0.5] * 3 + [1 / 3] * 3)
    adapter.apply(opt, 4)  # never steps backwards (a repeated step after a skipped one)
    assert adapter.done == 2
    state = adapter.state_dict()
    other = TorchSchedule(sched.LambdaLR(_opt(1.0), lambda s: 1.0 / (s + 1)), per_step=False, steps_per_epoch=3)
    other.load_state_dict(state)
    assert other.done == 2 and other.scheduler.last_epoch == 2


@pytest.mark.parametrize("spec, message", [
    (ScheduleSpec("cosine_warm_restarts", {"T_0": 1, "T_mult": 0}), "T_mult"),
    (ScheduleSpec("cosine_warm_restarts", {"T_0": 1.5}), "T_0"),
    (ScheduleSpec("step", {"step_size": 0.5}), "step_size 0.5 must be a whole number"),
    (ScheduleSpec("cosine", {"eta_min": "abc"}), "eta_min 'abc' must be a number >= 0"),
    (ScheduleSpec("cosine", {"lr": float("inf")}), "lr inf must be a positive number"),
    (ScheduleSpec("one_cycle_linear", {"max_lr": 0.1, "min_lr": 0.01, "peak_epoch": 3}), "below the 3 epochs"),
])
def test_every_parameter_is_checked_at_the_door(spec, message):
    with pytest.raises(ConfigError, match=message):
        check_spec(spec, span=3)


def test_a_spec_of_the_wrong_shape_is_one_clear_error():
    with pytest.raises(ConfigError, match="'params' must be dict"):
        ScheduleSpec("cosine", [1])


def test_a_users_torch_scheduler_shorter_than_the_run_is_refused_before_training():
    x, y = tensor_data(48)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match="built for 6 optimizer steps but the run takes 12"):
        fit(model, plain_loader(x, y, 8), epochs=2, optimizer=opt, config=TrainConfig(progress=False),
            scheduler=sched.OneCycleLR(opt, max_lr=0.1, total_steps=6))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_schedule_over_a_loader_without_length_is_refused():
    x, y = tensor_data(16)
    model = TinyNet()
    batches = ((x[i:i + 8], y[i:i + 8]) for i in range(0, 16, 8))  # a generator: no len()
    with pytest.raises(ConfigError, match="length"):
        fit(model, batches, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            scheduler=ScheduleSpec("onecycle", {"max_lr": 0.1}), config=TrainConfig(progress=False))
