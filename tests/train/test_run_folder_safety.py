"""A run folder that vanishes, turns read-only or is full, before or during a run (issue 21): one clear error, nothing
written elsewhere, no lock or temporary left, and a resume from the same process once the folder is back."""
import errno
import json
import logging
import os

import pytest
import torch

import pytorch_utils.io as io_module
import pytorch_utils.recipes.runner as runner
import pytorch_utils.runlock as runlock
from pytorch_utils.cli import main
from pytorch_utils.errors import CheckpointError, ConfigError
from pytorch_utils.recipes import run_recipe
from pytorch_utils.train.checkpoints import CheckpointManager

TINY = dict(train_limit=32, test_limit=16, batch_size=16, num_workers=0, progress=False)
CLI = ["train", "--recipe", "strixbee_l1", "--data", "synthetic", "--epochs", "1", "--train-limit", "32",
       "--test-limit", "16", "--batch-size", "16", "--num-workers", "0", "--no-progress"]
ROOT = os.geteuid() == 0  # chmod does not stop root: there a read-only folder is simulated


def _after_epoch(monkeypatch, epoch, action):
    """Call ``action()`` right after epoch ``epoch``'s checkpoint was written."""
    original = CheckpointManager.on_epoch_complete

    def then_act(self, state, record):
        original(self, state, record)
        if state.epoch == epoch:
            action()

    monkeypatch.setattr(CheckpointManager, "on_epoch_complete", then_act)


def _fail(err, text):
    def refuse(*args, **kwargs):
        raise OSError(err, text)
    return refuse


def _leftovers(folder):
    return [str(p) for p in folder.rglob("*") if p.name == ".lock" or p.name.endswith(".tmp")]


def _resumes(out):
    result = run_recipe("strixbee_l1", "synthetic", out, epochs=3, resume=True, **TINY)
    assert [r["epoch"] for r in result.history] == [1, 2, 3] and not (out / ".lock").exists()


def test_a_run_folder_that_vanishes_mid_run_stops_at_once_and_resumes_here_when_back(tmp_path, monkeypatch):
    drive = tmp_path / "drive" / "MyDrive"  # the mount point and the Drive folder the run writes into
    drive.mkdir(parents=True)
    out, unmounted = drive / "run", tmp_path / "unmounted"
    _after_epoch(monkeypatch, 1, lambda: drive.rename(unmounted))
    with pytest.raises(CheckpointError) as info:
        run_recipe("strixbee_l1", "synthetic", out, epochs=3, **TINY)
    assert str(info.value) == (f"run folder {str(out)!r} vanished or is not writable (gone); nothing was written "
                               "elsewhere; when it is back, resume with resume=True")
    assert list((tmp_path / "drive").iterdir()) == []  # nothing re-created on the local disk
    assert sorted(p.name for p in (unmounted / "run" / "checkpoints").iterdir()) == ["best.pt", "epoch-0001.pt"]
    monkeypatch.undo()
    unmounted.rename(drive)  # back; its lock (the unlink went to the vanished path) names this very process
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    _resumes(out)
    assert _leftovers(tmp_path) == []


def test_a_run_folder_replaced_by_an_empty_one_mid_run_is_named_as_gone(tmp_path, monkeypatch):
    # A folder deleted and made again (a Drive sync, another cell) said "output directory '.../checkpoints' is not
    # writable; choose another out_dir": the run folder it started in is gone, and a resume is what helps.
    out = tmp_path / "run"
    _after_epoch(monkeypatch, 1, lambda: (out.rename(tmp_path / "old"), out.mkdir()))
    with pytest.raises(CheckpointError, match=rf"^run folder {str(out)!r} vanished or is not writable \(gone\); "):
        run_recipe("strixbee_l1", "synthetic", out, epochs=3, **TINY)


def test_a_folder_gone_while_the_data_loads_is_not_re_created(tmp_path, monkeypatch):
    drive = tmp_path / "MyDrive"
    drive.mkdir()
    load = runner.load_datasets

    def unmount_then_load(*args, **kwargs):
        drive.rename(tmp_path / "unmounted")
        return load(*args, **kwargs)

    monkeypatch.setattr(runner, "load_datasets", unmount_then_load)
    with pytest.raises(CheckpointError, match=r"vanished or is not writable \(gone\)"):
        run_recipe("strixbee_l1", "synthetic", drive / "run", epochs=1, **TINY)
    assert not drive.exists() and _leftovers(tmp_path) == [str(tmp_path / "unmounted" / "run" / ".lock")]  # went along


def test_a_folder_turned_read_only_mid_run_is_one_error_and_best_stays(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def read_only():
        if ROOT:  # a read-only mount: every new file refused, os.access says so
            access = os.access
            monkeypatch.setattr(io_module.tempfile, "mkstemp", _fail(errno.EROFS, "Read-only file system"))
            monkeypatch.setattr(os, "access", lambda p, mode: str(p) != str(out) and access(p, mode))
        else:
            out.chmod(0o555)

    _after_epoch(monkeypatch, 1, read_only)
    with pytest.raises(CheckpointError, match=rf"^run folder {str(out)!r} vanished or is not writable \(read-only\); "):
        run_recipe("strixbee_l1", "synthetic", out, epochs=3, **TINY)
    monkeypatch.undo()
    out.chmod(0o755)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "epoch-0001.pt"]
    assert torch.load(out / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1
    assert [p for p in _leftovers(tmp_path) if not p.endswith(".lock")] == []  # (chmod kept the lock: taken over)
    _resumes(out)


def test_when_every_write_and_unlink_fails_the_real_error_surfaces_and_a_resume_here_works(tmp_path, monkeypatch,
                                                                                            caplog):
    out = tmp_path / "run"

    def disconnect():
        monkeypatch.setattr(io_module.tempfile, "mkstemp", _fail(errno.ENOTCONN, "Transport endpoint is not connected"))
        monkeypatch.setattr(os, "unlink", _fail(errno.ENOTCONN, "Transport endpoint is not connected"))

    _after_epoch(monkeypatch, 1, disconnect)
    with caplog.at_level(logging.WARNING, logger="pytorch_utils.runlock"):
        with pytest.raises(ConfigError, match=r"is not writable \(Transport endpoint is not connected\)"):
            run_recipe("strixbee_l1", "synthetic", out, epochs=3, **TINY)
    assert "could not remove" in caplog.text  # the lock's own failure is a log line, not the error
    monkeypatch.undo()
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    _resumes(out)


def test_a_new_run_moves_the_earlier_runs_exports_aside(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="pytorch_utils"):
        run_recipe("strixbee_l1", "synthetic", tmp_path, epochs=1, **TINY)
    assert "1 epoch of batch 16" in caplog.text  # not "1 epochs"
    assert main(["export", "--run", str(tmp_path)]) == 0  # <run>/model.pt and model.pt.json
    for name in ("model.onnx", "model.onnx.json"):
        (tmp_path / name).write_text(name)
    exports = ["model.onnx", "model.onnx.json", "model.pt", "model.pt.json"]
    assert all((tmp_path / name).is_file() for name in exports)
    (tmp_path / "report").mkdir()  # `report --run`'s default folder: the old run's page must not pass for the new's
    (tmp_path / "report" / "index.html").write_text("the earlier run")
    run_recipe("strixbee_l1", "synthetic", tmp_path, epochs=1, **TINY)
    (previous,) = (tmp_path / "previous").iterdir()
    assert sorted(p.name for p in previous.iterdir() if p.name.startswith("model")) == exports
    assert not any((tmp_path / name).exists() for name in [*exports, "report"])
    assert (previous / "report" / "index.html").read_text() == "the earlier run"


def _plain_file_above(tmp_path):
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "out"


def _previous_as_a_file(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "previous").write_text("")
    return tmp_path / "out"


def _read_only(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    if ROOT:
        monkeypatch.setattr(io_module.tempfile, "NamedTemporaryFile", _fail(errno.EROFS, "Read-only file system"))
    else:
        (tmp_path / "out").chmod(0o555)
    return tmp_path / "out"


def _full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock.json, "dump", _fail(errno.ENOSPC, "No space left on device"))
    return tmp_path / "out"


@pytest.mark.parametrize("case, message", [
    ("plain file above", "output directory '{out}' is not writable (Not a directory); choose another --out-dir"),
    ("previous is a file", "'{out}/previous' must be a folder of the run, not a link or a file: remove it"),
    ("read-only", "output directory '{out}' is not writable ("),
    ("full disk", "no space left on the disk holding '{out}' while writing '.lock'; free space or choose another "
                  "--out-dir"),
])
def test_a_folder_that_cannot_hold_the_run_is_refused_before_the_data_in_one_line(tmp_path, monkeypatch, capsys,
                                                                                  case, message):
    out = {"plain file above": lambda: _plain_file_above(tmp_path),
           "previous is a file": lambda: _previous_as_a_file(tmp_path),
           "read-only": lambda: _read_only(tmp_path, monkeypatch),
           "full disk": lambda: _full_disk(tmp_path, monkeypatch)}[case]()
    monkeypatch.setattr(runner, "load_datasets", _fail(errno.EIO, "the data was loaded"))
    assert main([*CLI, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(out=out)) and err.count("\n") == 1, err
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_an_out_dir_that_cannot_be_created_is_one_line(capsys):
    assert main([*CLI, "--out-dir", "/proc/nope/out"]) == 2
    assert capsys.readouterr().err == ("error: output directory '/proc/nope/out' is not writable (No such file or "
                                       "directory); choose another --out-dir\n")


def test_sgd_with_a_huge_lr_stops_at_the_first_nan_test_loss_with_nothing_saved(tmp_path, capsys):
    # Issue 21: --lr 1000 exited 0 with a NaN test loss in every epoch, each saved as a checkpoint.
    assert main([*CLI[:6], "3", *CLI[7:], "--lr", "1000", "--out-dir", str(tmp_path)]) == 2
    assert "became NaN/inf in epoch 1; stopped before saving it" in capsys.readouterr().err
    assert list((tmp_path / "checkpoints").iterdir()) == []
