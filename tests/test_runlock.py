"""The run-folder lock: a live run's folder is refused, a stale lock (killed run) is taken over, always released."""
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

import pytorch_utils.runlock as runlock
from pytorch_utils.cli import main
from pytorch_utils.errors import DatasetNotFoundError, DiskFullError, RunLockedError
from pytorch_utils.recipes import run_recipe
from pytorch_utils.runlock import LOCK_NAME, run_lock

SMOKE = ["--data", "synthetic", "--epochs", "1", "--train-limit", "32", "--test-limit", "16", "--batch-size", "16",
         "--num-workers", "0", "--no-progress", "--recipe", "strixbee_l1"]
HOLDER = """
import sys, time
from pytorch_utils.runlock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_file_records_the_holder_and_is_removed_on_release(tmp_path):
    out = tmp_path / "a" / "run"
    with run_lock(out) as path:
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["started"]
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):  # this process's own run, twice
            with run_lock(out):
                pass
        assert path.exists()  # the refused second run did not remove the first one's lock
    assert not (out / LOCK_NAME).exists()
    assert not (tmp_path / "a").exists()  # the folders it created were left empty, so they are gone


def test_the_lock_is_released_when_the_run_raises(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with run_lock(tmp_path):
            1 / 0
    assert not (tmp_path / LOCK_NAME).exists() and tmp_path.is_dir()  # a folder it did not create stays


def test_a_second_process_is_refused_while_the_first_holds_the_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as info:
            with run_lock(tmp_path):
                pass
        message = str(info.value)
        assert str(tmp_path) in message and f"pid {holder.pid}" in message and "choose another out_dir" in message
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL left the lock behind; its pid is dead now, so the folder is free again
    assert (tmp_path / LOCK_NAME).exists()
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("content", ["garbage{", json.dumps({"pid": "dead", "host": socket.gethostname()}), None])
def test_stale_or_unreadable_locks_are_replaced_with_a_log_line(tmp_path, content, caplog):
    text = content if content is not None else json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                           "started": "earlier"})
    (tmp_path / LOCK_NAME).write_text(text)
    old = time.time() - 60  # an unreadable lock counts only while a run may still be writing it (seconds)
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with caplog.at_level(logging.INFO, logger="pytorch_utils.runlock"), run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"replaced a stale lock in {str(tmp_path)!r}" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_being_written_this_instant_counts_as_held(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")  # created, not yet written: another run's os.open just returned
    with pytest.raises(RunLockedError, match="pid [?]"):
        with run_lock(tmp_path):
            pass


@pytest.mark.parametrize("plant", ["dev_zero_link", "fifo", "huge"])
def test_a_planted_link_fifo_or_huge_lock_is_never_followed_nor_read_whole(tmp_path, plant, caplog):
    path = tmp_path / LOCK_NAME
    if plant == "dev_zero_link":
        path.symlink_to("/dev/zero")  # read whole: gigabytes, then MemoryError
    elif plant == "fifo":
        os.mkfifo(path)  # a plain open waits for a writer forever
    else:
        with open(path, "wb") as fh:
            fh.truncate(3 << 30)  # 3 GB (sparse)
    with pytest.raises(RunLockedError) as info:  # fresh: counted as a lock being written this instant
        with run_lock(tmp_path):
            pass
    assert f"delete {str(path)!r}" in str(info.value) and "\n" not in str(info.value)
    old = time.time() - 60
    os.utime(path, (old, old), follow_symlinks=False)
    with caplog.at_level(logging.INFO, logger="pytorch_utils.runlock"), run_lock(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()  # replaced by a real lock, the link's target kept
    assert "replaced a stale lock" in caplog.text and os.path.exists("/dev/zero")


def test_a_lock_from_another_host_counts_while_its_heartbeat_is_fresh(tmp_path, monkeypatch):
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"pid": 1, "host": "other-colab-vm", "started": "today"}))
    with pytest.raises(RunLockedError, match="other-colab-vm"):
        with run_lock(tmp_path):
            pass
    old = time.time() - 3600
    os.utime(path, (old, old))  # a killed session stops touching its lock
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    with run_lock(tmp_path):
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5  # the live holder keeps touching its own lock


def test_cli_refuses_a_live_folder_and_resume_ignores_a_stale_lock(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMOKE, "--out-dir", str(out)]) == 0
    assert not (out / LOCK_NAME).exists()  # released at the end
    capsys.readouterr()
    with run_lock(out):  # a run still going in this folder
        assert main(["train", *SMOKE, "--out-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(out) in err and f"pid {os.getpid()}" in err
        assert "--out-dir" in err and "out_dir" not in err.replace("--out-dir", "")
    assert (out / "checkpoints" / "epoch-0001.pt").is_file() and not (out / "previous").exists()  # untouched
    (out / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))  # a killed run's
    assert main(["train", *SMOKE[:3], "2", *SMOKE[4:], "--out-dir", str(out), "--resume"]) == 0
    assert (out / "checkpoints" / "epoch-0002.pt").is_file() and not (out / LOCK_NAME).exists()


def test_run_recipe_releases_the_lock_when_it_fails(tmp_path):
    with pytest.raises(DatasetNotFoundError):  # fails after the lock was taken
        run_recipe("strixbee_l1", data=str(tmp_path / "no_such_data"), out_dir=tmp_path / "run", epochs=1,
                   progress=False)
    assert not (tmp_path / "run").exists()  # lock released, and the folder it made for it removed
    with run_lock(tmp_path / "run"):
        pass


def test_a_failed_release_never_hides_the_error_and_this_process_may_take_the_lock_over(tmp_path, monkeypatch,
                                                                                          caplog):
    def disconnected(*args, **kwargs):  # a Drive gone mid-run: every unlink fails
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    with caplog.at_level(logging.WARNING, logger="pytorch_utils.runlock"), pytest.raises(ZeroDivisionError):
        with run_lock(tmp_path):
            monkeypatch.setattr(os, "unlink", disconnected)
            1 / 0  # the run's own error is what surfaces, not the lock's
    monkeypatch.undo()
    assert f"could not remove {str(tmp_path / LOCK_NAME)!r} (Transport endpoint is not connected)" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()  # left behind, naming this process
    with run_lock(tmp_path):  # a resume from the same kernel: no run here holds it, so it is stale
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):  # while held, still refused
            with run_lock(tmp_path):
                pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_full_disk_at_the_lock_write_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch):
    def full(obj, fh):  # the empty file was created; its text does not fit
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlock.json, "dump", full)
    with pytest.raises(DiskFullError, match=rf"^no space left on the disk holding {str(tmp_path / 'run')!r} while "
                                            r"writing '\.lock'"):
        with run_lock(tmp_path / "run"):
            pass
    assert list(tmp_path.iterdir()) == []  # no lock, and the folder made for it is gone


def test_a_folder_where_the_lock_goes_is_one_line_and_kept(tmp_path):
    (tmp_path / LOCK_NAME / "notes").mkdir(parents=True)  # old or new: neither a live run nor a stale lock
    old = time.time() - 3600
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with pytest.raises(RunLockedError) as info:  # an old one was unlinked: an IsADirectoryError traceback
        with run_lock(tmp_path):
            pass
    assert str(info.value).endswith(f"(if no such run exists, delete {str(tmp_path / LOCK_NAME)!r})")
    assert (tmp_path / LOCK_NAME / "notes").is_dir()
