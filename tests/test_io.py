"""atomic_write, the one writer: a fresh temporary in the existing folder, then a rename; a symlink is replaced, never
written through; disk full is one clear DiskFullError, the previous file intact, no temporary left behind."""
import errno
import os

import pytest
import torch

import pytorch_utils.io as io_module
import pytorch_utils.train.checkpoints as checkpoints
from pytorch_utils.cli import main
from pytorch_utils.errors import ConfigError, DiskFullError, PytorchUtilsError
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


def test_a_symlink_at_the_final_name_is_replaced_not_written_through(tmp_path):
    important = tmp_path / "important.txt"
    important.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").symlink_to("../important.txt")
    atomic_write_text(tmp_path / "run" / "summary.json", "new")
    assert important.read_text() == "keep me"
    assert not (tmp_path / "run" / "summary.json").is_symlink()
    assert (tmp_path / "run" / "summary.json").read_text() == "new"


def test_the_temporary_is_fresh_and_the_mode_follows_the_umask(tmp_path):
    names = []
    atomic_write(tmp_path / "a.txt", lambda tmp: (names.append(tmp), open(tmp, "w").write("x")))
    tmp = os.path.basename(names[0])
    assert tmp.startswith(".a.txt.") and tmp.endswith(".tmp") and tmp != ".a.txt.tmp"  # unguessable, not fixed
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_any_failure_removes_the_temporary_and_keeps_the_old_file(tmp_path):
    target = atomic_write_text(tmp_path / "h.json", "old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, _fills_the_disk_after(5, KeyboardInterrupt()))
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["h.json"]


def test_a_missing_folder_is_not_created_but_named(tmp_path):
    gone = tmp_path / "MyDrive" / "run"  # an unmounted Drive: never re-created on the local disk
    with pytest.raises(ConfigError) as info:
        atomic_write_text(gone / "history.json", "[]")
    assert str(info.value) == (f"output directory {str(gone)!r} is not writable (No such file or directory); "
                               "choose another out_dir")
    assert not (tmp_path / "MyDrive").exists()


def test_a_read_only_folder_is_one_config_error(tmp_path, monkeypatch):
    def read_only(**kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io_module.tempfile, "mkstemp", read_only)
    with pytest.raises(ConfigError, match=rf"^output directory {str(tmp_path)!r} is not writable \(Read-only"):
        atomic_write_text(tmp_path / "x.json", "{}")


def test_a_saved_plot_replaces_a_symlink_and_is_a_png(tmp_path):
    from pytorch_utils.viz.images import finish, new_figure

    (tmp_path / "important.txt").write_text("keep me")
    (tmp_path / "curves.png").symlink_to("important.txt")
    finish(new_figure((2, 2)), tmp_path / "curves.png")
    assert (tmp_path / "important.txt").read_text() == "keep me" and not (tmp_path / "curves.png").is_symlink()
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG") and len(os.listdir(tmp_path)) == 2


def test_a_folder_at_the_final_name_is_one_config_error(tmp_path):
    (tmp_path / "history.json").mkdir()
    with pytest.raises(ConfigError, match=r"history.json' is a folder.*remove or rename that folder") as info:
        atomic_write_text(tmp_path / "history.json", "[]")
    assert "\n" not in str(info.value) and os.listdir(tmp_path) == ["history.json"]  # the temporary removed


def test_a_run_folder_on_an_unmounted_google_drive_is_refused_not_created_locally(tmp_path):
    # After a Colab restart without drive.mount, run_recipe(out_dir="/content/drive/MyDrive/run", resume=True) trained
    # into a local /content/drive/MyDrive (lost with the VM; and drive.mount then refuses the non-empty mount point).
    from pytorch_utils.recipes import run_recipe

    (tmp_path / "content").mkdir()
    drive = tmp_path / "content" / "drive"
    with pytest.raises(ConfigError) as info:
        run_recipe("strixbee_l1", "synthetic", drive / "MyDrive" / "run", epochs=1, resume=True)
    assert str(info.value) == (f"{str(drive / 'MyDrive')!r} does not exist: mount Google Drive first, or choose "
                               "another out_dir")
    assert not drive.exists()
    (drive / "MyDrive").mkdir(parents=True)  # mounted: a new run folder inside it is created as usual
    assert io_module.ensure_writable_dir(drive / "MyDrive" / "runs" / "a").is_dir()


def test_zip_directory_bytes_is_the_size_zipfile_reads(tmp_path):
    import zipfile

    plain, commented, other = tmp_path / "plain.zip", tmp_path / "commented.zip", tmp_path / "not.zip"
    for path, comment in ((plain, b""), (commented, b"c" * 65535)):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("train/a/0.png", b"x")
            zf.writestr("train/b/1.png", b"y")
            zf.comment = comment
        with open(path, "rb") as fh:
            assert io_module.zip_directory_bytes(path) == zipfile._EndRecData(fh)[5] == 2 * (46 + 13)
    other.write_bytes(b"no zip here" * 100)
    assert io_module.zip_directory_bytes(other) == 0
