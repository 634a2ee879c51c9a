"""A lock on a run's output folder, so two runs never write into one folder at once: ``<out_dir>/.lock``, created
exclusively, holding JSON ``{"pid", "host", "started"}``. A lock whose process is gone is stale (this host: no such
pid; another host sharing the folder, e.g. Drive: its holder stopped touching it) and is replaced, with a log line."""
import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from pytorch_utils.errors import RunLockedError
from pytorch_utils.io import ensure_writable_dir

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0  # the holder touches its lock this often; one from another host untouched 4x as long is stale


def _holder(path: Path) -> dict:
    """The run recorded in the lock ``path``; {} when gone or unreadable (a kill mid-write)."""
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    return {}


def _alive(path: Path, info: dict) -> bool:
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        # Half-written (a run is writing it this instant, or was killed doing so) or another machine's (a folder on
        # Drive): alive while recently touched.
        with contextlib.suppress(OSError):
            return time.time() - path.stat().st_mtime < (4 * HEARTBEAT_S if isinstance(pid, int) else 10)
        return False
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except OSError as exc:
        return isinstance(exc, PermissionError)  # it exists, owned by another user
    return True


def _replace_stale(path: Path) -> None:
    holder = _holder(path)
    if _alive(path, holder):
        raise RunLockedError(f"{str(path.parent)!r} is in use by a running run (pid {holder.get('pid', '?')} on "
                             f"{holder.get('host', '?')}, started {holder.get('started')}); wait for it to finish, "
                             f"stop it, or choose another out_dir (if no such run exists, delete {str(path)!r})")
    log.info(f"replaced a stale lock in {str(path.parent)!r} (pid {holder.get('pid', '?')} is no longer running)")
    path.unlink(missing_ok=True)  # (two runs replacing one stale lock in the same instant could both go on)


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(path)


@contextlib.contextmanager
def run_lock(out_dir):
    """``with run_lock(out_dir):`` holds ``<out_dir>/.lock`` (RunLockedError while a live run holds it) and removes
    it however the block ends, with the folders it created if the run left them empty. Yields the lock's path."""
    out_dir = Path(out_dir)
    path, made = out_dir / LOCK_NAME, [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # deepest first
    ensure_writable_dir(out_dir)  # ConfigError naming the folder when it cannot be created or written
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            _replace_stale(path)
    with os.fdopen(fd, "w") as fh:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M")}, fh)
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(path, stop), daemon=True).start()
    try:
        yield path
    finally:
        stop.set()
        if _holder(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        for folder in made:
            with contextlib.suppress(OSError):  # only an empty folder goes
                folder.rmdir()

