"""A kill between an epoch's checkpoint and ``best.pt``: resume puts the best epoch back into ``best.pt``."""
import logging
import shutil

import torch

from pytorch_utils.recipes import run_recipe
from pytorch_utils.train.checkpoints import FORMAT, load_checkpoint, repair_best, save_checkpoint


def _ckpt(epoch, best_epoch):
    return {"format": FORMAT, "model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch,
            "best": {"monitor": "test_acc", "value": 50.0, "epoch": best_epoch}}


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_repair_best_links_the_recorded_best_epoch(tmp_path):
    save_checkpoint(_ckpt(1, 1), tmp_path / "epoch-0001.pt")
    shutil.copyfile(tmp_path / "epoch-0001.pt", tmp_path / "best.pt")
    newest = _ckpt(2, 2)
    save_checkpoint(newest, tmp_path / "epoch-0002.pt")  # killed here, before best.pt was updated
    assert repair_best(tmp_path, newest) == tmp_path / "best.pt"
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert repair_best(tmp_path, newest) is None  # current now: nothing to do


def test_repair_best_when_best_is_missing_or_its_epoch_file_is_gone(tmp_path):
    save_checkpoint(_ckpt(3, 3), tmp_path / "epoch-0003.pt")
    assert repair_best(tmp_path, _ckpt(3, 3)) is not None  # best.pt missing: written
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3
    lines = _Lines()
    logging.getLogger("pytorch_utils.train.checkpoints").addHandler(lines)
    try:
        assert repair_best(tmp_path, _ckpt(5, 4)) is None  # epoch 4 was never saved (checkpoint_every > 1)
    finally:
        logging.getLogger("pytorch_utils.train.checkpoints").removeHandler(lines)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3 and "best epoch 4" in lines.lines[0]


def test_resume_repairs_a_stale_best_pt(tmp_path):
    kw = dict(data="synthetic", out_dir=tmp_path, train_limit=32, test_limit=16, batch_size=16, num_workers=0,
              progress=False)
    run_recipe("strixbee_l1", epochs=2, **kw)
    ckpt_dir = tmp_path / "checkpoints"
    best_epoch = load_checkpoint(ckpt_dir / "epoch-0002.pt")["best"]["epoch"]
    other = 1 if best_epoch == 2 else 2
    # As a SIGKILL would leave it: best.pt still the older epoch. Unlink first: best.pt may be a hard link to an
    # epoch file, and copying into it would rewrite that epoch file too.
    (ckpt_dir / "best.pt").unlink()
    shutil.copyfile(ckpt_dir / f"epoch-{other:04d}.pt", ckpt_dir / "best.pt")
    lines = _Lines()
    logging.getLogger("pytorch_utils.train.checkpoints").addHandler(lines)
    try:
        run_recipe("strixbee_l1", epochs=3, resume=True, **kw)
    finally:
        logging.getLogger("pytorch_utils.train.checkpoints").removeHandler(lines)
    assert any(f"held epoch {other}; restored it to the best epoch {best_epoch}" in line for line in lines.lines)
    final_best = load_checkpoint(ckpt_dir / "epoch-0003.pt")["best"]["epoch"]
    assert load_checkpoint(ckpt_dir / "best.pt")["epoch"] == final_best
