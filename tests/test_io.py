"""Disk full while writing: one clear DiskFullError, the previous file intact, no temporary left behind."""
import errno

import pytest
import torch

import pytorch_utils.train.checkpoints as checkpoints
from pytorch_utils.cli import main
from pytorch_utils.errors import DiskFullError, PytorchUtilsError
from pytorch_utils.io import atomic_write, atomic_write_text
from pytorch_utils.train.checkpoints import load_checkpoint, save_checkpoint


def _fills_the_disk_after(n_bytes, exc):
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"x" * n_bytes)  # a partial file, as a real full disk leaves
        raise exc

    return write


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 OSError(errno.EDQUOT, "Disk quota exceeded"),
                                 RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")])
def test_disk_full_is_one_line_and_keeps_the_previous_file(tmp_path, exc):
    target = atomic_write_text(tmp_path / "summary.json", "old")
    with pytest.raises(DiskFullError) as info:
        atomic_write(target, _fills_the_disk_after(10, exc))
    message = str(info.value)
    assert message.startswith(f"no space left on the disk holding {str(tmp_path)!r} while writing 'summary.json'")
    assert "free space or choose another out_dir" in message and "\n" not in message
    assert isinstance(info.value, PytorchUtilsError) and isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_other_write_errors_are_not_reported_as_a_full_disk(tmp_path):
    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "x", _fills_the_disk_after(1, PermissionError(errno.EACCES, "denied")))


def test_checkpoint_save_on_a_full_disk_keeps_the_earlier_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "epoch-0001.pt"
    save_checkpoint({"format": checkpoints.FORMAT, "model": {"w": torch.ones(2)}, "epoch": 1}, path)

    def full_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 1024")

    monkeypatch.setattr(checkpoints.torch, "save", full_save)
    with pytest.raises(DiskFullError, match="while writing 'epoch-0001.pt'"):
        save_checkpoint({"format": checkpoints.FORMAT, "model": {"w": torch.zeros(2)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))


def test_cli_reports_a_full_disk_in_one_line_with_exit_2(tmp_path, capsys, monkeypatch):
    smoke = ["train", "--recipe", "strixbee_l1", "--data", "synthetic", "--train-limit", "32", "--test-limit", "16",
             "--batch-size", "16", "--num-workers", "0", "--no-progress", "--out-dir", str(tmp_path)]
    assert main([*smoke, "--epochs", "1"]) == 0
    capsys.readouterr()

    def enospc(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", enospc)
    assert main([*smoke, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: no space left on the disk holding") and "while writing 'epoch-0002.pt'" in err
    assert err.rstrip().endswith("choose another --out-dir (files written before are intact)")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints" / "epoch-0001.pt")["epoch"] == 1
    assert not (tmp_path / "checkpoints" / "epoch-0002.pt").exists() and not (tmp_path / ".lock").exists()
