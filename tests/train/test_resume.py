"""Resume is independent of callback order: interrupted + resumed == uninterrupted, for every order of the callbacks."""
import itertools

import pytest
import torch
import torch.nn as nn
from _helpers import Interrupt
from torch.utils.data import DataLoader, TensorDataset

from pytorch_utils.train import TrainConfig, fit
from pytorch_utils.train.callbacks import EarlyStopping, Phase, PhaseSchedule
from pytorch_utils.train.checkpoints import CheckpointManager, latest_checkpoint
from pytorch_utils.train.schedules import ScheduleSpec
from pytorch_utils.utils import seed_everything

EPOCHS = 8
PHASES = [Phase(1, 3, "a", dropout=0.2, scheduler=ScheduleSpec("cosine_warm_restarts", {"lr": 0.2, "T_0": 2})),
          Phase(4, EPOCHS, "b", dropout=0.1, scheduler=ScheduleSpec("cosine", {"lr": 0.2}))]
QUIET = TrainConfig(progress=False)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 2, (n,), generator=g))


def _run(ckpt_dir, order, resume=False, interrupt_after=None):
    """Returns (history or None, model, LRs of every optimizer step)."""
    seed_everything(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    lrs = []
    opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
    make = {"es": lambda: EarlyStopping(monitor="test_loss", mode="min", patience=2, start_epoch=4),
            "ckpt": lambda: CheckpointManager(ckpt_dir),
            "phases": lambda: PhaseSchedule(PHASES)}
    callbacks = [make[name]() for name in order] + ([Interrupt(interrupt_after)] if interrupt_after else [])
    train, test = DataLoader(_data(32, 1), batch_size=8), DataLoader(_data(32, 2), batch_size=16)
    try:
        hist = fit(model, train, test, epochs=EPOCHS, optimizer=opt, callbacks=callbacks, config=QUIET,
                   resume=latest_checkpoint(ckpt_dir) if resume else None)
    except KeyboardInterrupt:
        return None, model, lrs
    return hist, model, lrs


def _strip(history):
    return [{k: v for k, v in r.items() if "seconds" not in k and k != "checkpoint"} for r in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    hist, model, lrs = _run(tmp_path_factory.mktemp("ref"), ("ckpt", "phases", "es"))
    return hist, model.state_dict(), lrs


def test_reference_stops_early_inside_phase_two(reference):
    hist, _, lrs = reference
    assert 5 <= len(hist) < EPOCHS and hist[-1]["early_stop"]  # patience used up after the phase change
    assert [r["phase"] for r in hist][:4] == ["a", "a", "a", "b"]
    assert len(lrs) == 4 * len(hist) and lrs[0] == pytest.approx(0.2) and lrs[12] == pytest.approx(0.2)


@pytest.mark.parametrize("order", list(itertools.permutations(("es", "ckpt", "phases"))))
@pytest.mark.parametrize("interrupt_after", [2, 5])  # in phase 1; in phase 2 with one epoch of patience used
def test_interrupted_and_resumed_equals_uninterrupted_for_every_callback_order(tmp_path, reference, order,
                                                                               interrupt_after):
    ref_hist, ref_weights, ref_lrs = reference
    hist, _, first_lrs = _run(tmp_path, order, interrupt_after=interrupt_after)
    assert hist is None
    hist, model, second_lrs = _run(tmp_path, order, resume=True)
    assert _strip(hist) == _strip(ref_hist)
    assert all(torch.equal(v, ref_weights[k]) for k, v in model.state_dict().items())
    assert first_lrs + second_lrs == ref_lrs  # the LR at every optimizer step


def _user_scheduler(kind, opt):
    sched = torch.optim.lr_scheduler
    return {"batch": lambda: sched.OneCycleLR(opt, max_lr=0.5, total_steps=16),
            "epoch": lambda: sched.StepLR(opt, step_size=1, gamma=0.5),
            "plateau": lambda: sched.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)}[kind]()  # halves often


@pytest.mark.parametrize("kind", ["batch", "epoch", "plateau"])
def test_a_users_own_torch_scheduler_resumes_through_its_state_dict(tmp_path, kind):
    def run(folder, resume=False, interrupt_after=None):
        seed_everything(0)
        model = nn.Linear(8, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        lrs = []
        opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
        callbacks = [CheckpointManager(folder)] + ([Interrupt(interrupt_after)] if interrupt_after else [])
        loader = DataLoader(_data(32, 1), batch_size=8)
        try:
            fit(model, loader, loader, epochs=4, optimizer=opt, scheduler=_user_scheduler(kind, opt),
                callbacks=callbacks, resume=latest_checkpoint(folder) if resume else None, config=QUIET)
        except KeyboardInterrupt:
            pass
        return lrs, model.state_dict()

    ref_lrs, ref_weights = run(tmp_path / "uninterrupted")
    first, _ = run(tmp_path / "run", interrupt_after=2)
    second, weights = run(tmp_path / "run", resume=True)
    assert first + second == pytest.approx(ref_lrs) and len(set(ref_lrs)) > 1  # the LR did change
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)


@pytest.mark.parametrize("kind", ["batch", "epoch"])
def test_a_users_own_torch_scheduler_gives_the_lrs_of_stepping_it_by_hand(kind):
    # By hand, as torch's docs loop: OneCycleLR stepped after every optimizer step, StepLR after every epoch.
    loader = DataLoader(_data(32, 1), batch_size=8)

    def by_hand():
        torch.manual_seed(0)
        model = nn.Linear(8, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler, lrs = _user_scheduler(kind, opt), []
        for _ in range(4):
            for x, y in loader:
                lrs.append(opt.param_groups[0]["lr"])
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
                if kind == "batch":
                    scheduler.step()
            if kind == "epoch":
                scheduler.step()
        return lrs, model.state_dict()

    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lrs = []
    opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
    fit(model, loader, None, epochs=4, optimizer=opt, scheduler=_user_scheduler(kind, opt), config=QUIET)
    ref_lrs, ref_weights = by_hand()
    assert lrs == pytest.approx(ref_lrs, rel=1e-12) and len(set(ref_lrs)) > 2
    assert all(torch.allclose(v, ref_weights[k]) for k, v in model.state_dict().items())
