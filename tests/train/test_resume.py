"""Resume is independent of callback order: interrupted + resumed == uninterrupted, for every order of the callbacks."""
import itertools

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from _helpers import Interrupt
from pytorch_utils.train import fit, seed_everything
from pytorch_utils.train.callbacks import EarlyStopping, Phase, PhaseSchedule
from pytorch_utils.train.checkpoints import CheckpointManager
from pytorch_utils.train.schedules import ScheduleSpec

EPOCHS = 8
PHASES = [Phase(1, 3, "a", dropout=0.2, scheduler=ScheduleSpec("cosine_warm_restarts", {"lr": 0.2, "T_0": 2})),
          Phase(4, EPOCHS, "b", dropout=0.1, scheduler=ScheduleSpec("cosine", {"lr": 0.2}))]




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
            "ckpt": lambda: CheckpointManager(ckpt_dir, resume=resume),
            "phases": lambda: PhaseSchedule(PHASES)}
    callbacks = [make[name]() for name in order] + ([Interrupt(interrupt_after)] if interrupt_after else [])
    train, test = DataLoader(_data(32, 1), batch_size=8), DataLoader(_data(32, 2), batch_size=16)
    try:
        hist = fit(model, train, test, epochs=EPOCHS, optimizer=opt, callbacks=callbacks, progress=False)
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


@pytest.mark.parametrize("kind", ["batch", "plateau"])
def test_a_users_own_torch_scheduler_resumes_through_its_state_dict(tmp_path, kind):
    def run(folder, resume=False, interrupt_after=None):
        seed_everything(0)
        model = nn.Linear(8, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=16) if kind == "batch"
                 else torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0))  # halves often
        lrs = []
        opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
        callbacks = [CheckpointManager(folder, resume=resume)] + ([Interrupt(interrupt_after)] if interrupt_after
                                                                   else [])
        loader = DataLoader(_data(32, 1), batch_size=8)
        try:
            fit(model, loader, loader, epochs=4, optimizer=opt, scheduler=sched, callbacks=callbacks, progress=False)
        except KeyboardInterrupt:
            pass
        return lrs, model.state_dict()

    ref_lrs, ref_weights = run(tmp_path / "uninterrupted")
    first, _ = run(tmp_path / "run", interrupt_after=2)
    second, weights = run(tmp_path / "run", resume=True)
    assert first + second == pytest.approx(ref_lrs) and len(set(ref_lrs)) > 1  # the LR did change
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
