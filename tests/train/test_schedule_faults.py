"""The four schedule faults of issue 19, each run as a user would: the LR finder's LR with a plateau/cosine/step/
constant schedule, a phase list that changes only the input size, a resume at another batch size, and a schedule
built for fewer steps than its run."""
import logging
import warnings

import pytest
import torch
import torch.nn as nn
from _helpers import Interrupt, TinyNet, plain_loader, tensor_data

from pytorch_utils.data import make_loader
from pytorch_utils.data.synthetic import make_synthetic
from pytorch_utils.errors import ConfigError
from pytorch_utils.train import TrainConfig, fit
from pytorch_utils.train.callbacks import Phase, PhaseSchedule
from pytorch_utils.train.checkpoints import CheckpointManager, latest_checkpoint
from pytorch_utils.train.schedules import ScheduleSpec, build_schedule, with_found_lrs
from pytorch_utils.utils import seed_everything

QUIET = TrainConfig(progress=False)


def _recorded_lrs(opt):
    """The LR of every optimizer step ``opt`` takes from now on."""
    lrs = []
    opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
    return lrs


# ---- (a) the LR finder's result reaches every schedule ---------------------------------------------------------------

@pytest.mark.parametrize("spec", [ScheduleSpec("plateau", {"patience": 5}), ScheduleSpec("cosine"),
                                  ScheduleSpec("step", {"step_size": 1}), ScheduleSpec("constant"),
                                  ScheduleSpec("cosine_warm_restarts", {"T_0": 2})], ids=lambda s: s.name)
def test_the_found_lr_is_where_the_first_epoch_trains(spec):
    # Before: only schedules with a max_lr took the finder's LR; these trained at the optimizer's 0.05 throughout.
    x, y = tensor_data(64)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    lrs = _recorded_lrs(opt)
    schedule = build_schedule(with_found_lrs(spec, 0.1, 0.01), opt, steps_per_epoch=4, epochs=2)
    fit(model, plain_loader(x, y, 16), plain_loader(x, y, 32), epochs=2, optimizer=opt, scheduler=schedule,
        config=QUIET)
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)
    if spec.name in ("plateau", "constant"):
        assert lrs == pytest.approx([0.1] * 8)


def test_a_recipe_with_an_lr_finder_and_a_plateau_schedule_trains_at_the_found_lr(tmp_path):
    from pytorch_utils.recipes import get_recipe, run_recipe
    from pytorch_utils.train.lr_finder import LRFinderSpec

    recipe = get_recipe("strixbee_l1").replace(lr_finder=LRFinderSpec())
    assert recipe.scheduler.name == "plateau"
    assert recipe.with_lrs(0.1, 0.01).scheduler.params["lr"] == 0.1
    result = run_recipe(recipe, "synthetic", tmp_path, epochs=1, train_limit=64, test_limit=32, batch_size=16,
                        num_workers=0, lr_finder=LRFinderSpec(start_lr=1e-4, end_lr=1.0, num_iter=10),
                        progress=False)
    lr_max = result.lr_finder.lr_max
    assert lr_max != pytest.approx(recipe.lr)  # the sweep found another LR than the recipe's own
    assert result.history[0]["lr"] == pytest.approx(lr_max)


# ---- (b) a phase that changes only the input size ------------------------------------------------------------------

def test_phases_that_set_only_the_input_size_resize_the_training_batches():
    # Before: the size was switched only when some phase up to it named an augmentation; this trained at 32 px.
    seed_everything(0)
    loader = make_loader(make_synthetic(64, num_classes=4, size=32, seed=0), 16, train=True, num_workers=0, seed=0)
    loader.set_augmentation("standard")
    model = TinyNet()
    sides = []

    class Epoch(PhaseSchedule):
        def on_epoch_start(self, state):
            super().on_epoch_start(state)
            sides.append([])

    model.register_forward_pre_hook(lambda m, args: sides[-1].append(tuple(args[0].shape[-2:])) if m.training
                                    else None)
    fit(model, loader, None, epochs=3, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), config=QUIET,
        callbacks=[Epoch([Phase(1, 1, input_size=32), Phase(2, 3, input_size=40)])])
    assert [set(s) for s in sides] == [{(32, 32)}, {(40, 40)}, {(40, 40)}]
    assert loader.size == 40 and loader.augmentation == "standard"  # a size-only phase keeps the augmentation


# ---- (c) resuming at another batch size follows the schedule by progress -------------------------------------------

def test_resume_at_another_batch_size_continues_the_schedule_from_the_same_point(tmp_path, caplog):
    # Before: 16 saved steps of batch 8 were read as 16 steps of batch 16, the end of the run: epochs 3-4 at 4e-7.
    x, y = tensor_data(64)
    spec = ScheduleSpec("onecycle", {"max_lr": 0.1})

    def run(batch_size, folder, resume=None, interrupt_after=None):
        seed_everything(0)
        model = TinyNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        lrs = _recorded_lrs(opt)
        callbacks = [CheckpointManager(folder)] + ([Interrupt(interrupt_after)] if interrupt_after else [])
        try:
            hist = fit(model, plain_loader(x, y, batch_size, shuffle=True), None, epochs=4, optimizer=opt,
                       scheduler=spec, callbacks=callbacks, resume=resume, config=QUIET)
        except KeyboardInterrupt:
            hist = None
        return hist, lrs

    _, reference = run(16, tmp_path / "ref")  # uninterrupted at batch 16: 4 steps per epoch
    assert len(reference) == 16
    _, first = run(8, tmp_path / "run", interrupt_after=2)
    assert len(first) == 16  # 2 epochs of 8 steps
    with caplog.at_level(logging.INFO, logger="pytorch_utils.train.checkpoints"):
        hist, resumed = run(16, tmp_path / "run", resume=latest_checkpoint(tmp_path / "run"))
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    assert resumed == pytest.approx(reference[8:], rel=1e-9)  # epochs 3-4 of the batch-16 run
    assert resumed[0] > 0.05  # the middle of the cycle, not its 4e-7 end
    assert any("8 steps per epoch, this run has 4" in r.getMessage() for r in caplog.records)


# ---- (d) a schedule shorter than its run is refused; the spec itself fits the run ----------------------------------

def test_a_schedule_built_for_fewer_steps_than_the_run_is_refused_and_the_spec_fits_any_run():
    # Before: built for 18 steps and run for 21, the LR sat at its floor for the last 3 steps without a word.
    x, y = tensor_data(56)
    loader = plain_loader(x, y, 8)  # 7 steps per epoch, 21 in 3 epochs
    spec = ScheduleSpec("onecycle", {"max_lr": 0.1})
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    short = build_schedule(spec, opt, steps_per_epoch=6, epochs=3)
    with pytest.raises(ConfigError, match=r"built for 18 optimizer steps but the run takes 21"):
        fit(model, loader, None, epochs=3, optimizer=opt, scheduler=short, config=QUIET)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # refused before any training

    lrs = _recorded_lrs(opt)
    fit(model, loader, None, epochs=3, optimizer=opt, scheduler=spec, config=QUIET)
    by_hand = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    torch_lrs, torch_sched = [], torch.optim.lr_scheduler.OneCycleLR(by_hand, 0.1, total_steps=21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "step() before optimizer.step()": only the LRs are read
        for _ in range(21):
            torch_lrs.append(by_hand.param_groups[0]["lr"])
            torch_sched.step()
    assert len(lrs) == 21 and lrs == pytest.approx(torch_lrs, rel=1e-9)
