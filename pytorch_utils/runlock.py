"""A lock on a run's output folder so two runs never write into it at once: ``<out_dir>/.lock``, created exclusively,
JSON ``{"pid", "host", "started"}``. One whose process is gone (this host: no such pid; another host sharing the folder,
e.g. Drive: not touched lately) is stale and replaced, with a log line."""
import contextlib
import json
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path

from pytorch_utils.errors import RunLockedError
from pytorch_utils.io import disk_full_error, ensure_writable_dir, not_writable_error

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0  # the holder touches its lock this often; one from another host untouched 4x as long is stale
_HELD: set = set()  # the locks (real paths) this process holds now


def _holder(path: Path) -> dict:
    """The run in ``path`` (first 4 KiB, no link followed); {} if gone, garbled (killed mid-write) or not a file."""
    with contextlib.suppress(OSError, ValueError):
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as fh:
            info = json.loads(fh.read(4096)) if stat.S_ISREG(os.fstat(fh.fileno()).st_mode) else {}
        return info if isinstance(info, dict) else {}
    return {}


def _alive(path: Path, info: dict) -> bool:
    pid = info.get("pid")
    if pid == os.getpid() and info.get("host") == socket.gethostname():  # this process: held now, or left by a stop
        return os.path.realpath(path) in _HELD  # whose unlink failed (a Drive gone); then a resume here takes it over
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        # half-written (being written now, or killed doing so) or another machine's (Drive): alive while touched lately
        with contextlib.suppress(OSError):  # a folder there is no lock, and not ours to delete: held until removed
            age = time.time() - path.lstat().st_mtime
            return path.is_dir() or age < (4 * HEARTBEAT_S if isinstance(pid, int) else 10)
        return False
    try:
        return os.kill(pid, 0) is None  # signal 0 only asks whether the process exists
    except OSError as exc:
        return isinstance(exc, PermissionError)  # it exists, owned by another user


def _replace_stale(path: Path) -> None:
    holder = _holder(path)
    if _alive(path, holder):
        raise RunLockedError(f"{str(path.parent)!r} is in use by a running run (pid {holder.get('pid', '?')} on "
                             f"{holder.get('host', '?')}, started {holder.get('started')}); wait for it to finish, "
                             f"stop it, or choose another out_dir (if no such run exists, delete {str(path)!r})")
    log.info(f"replaced a stale lock in {str(path.parent)!r} (the run of pid {holder.get('pid', '?')} has ended)")
    path.unlink(missing_ok=True)  # (two runs replacing one stale lock in the same instant could both go on)


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(path)


@contextlib.contextmanager
def run_lock(out_dir):
    """``with run_lock(out_dir):`` holds ``<out_dir>/.lock`` (RunLockedError while a live run holds it; DiskFullError
    or ConfigError, no lock left, when it cannot be written) and removes it however the block ends, with the folders
    it created if the run left them empty; a failed removal (a Drive gone) is logged, never hides the run's error.
    Yields the lock's path."""
    out_dir = Path(out_dir)
    path, made = out_dir / LOCK_NAME, [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # deepest first
    ensure_writable_dir(out_dir)  # ConfigError naming the folder when it cannot be created or written
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            _replace_stale(path)
    key, stop = os.path.realpath(path), threading.Event()
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M")}
    _HELD.add(key)
    try:
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
        except OSError as exc:  # a full disk: the file was created, not written (so it goes below)
            raise (disk_full_error(exc, path) or not_writable_error(out_dir, exc)) from None
        threading.Thread(target=_heartbeat, args=(path, stop), daemon=True).start()
        yield path
    finally:
        stop.set()
        _HELD.discard(key)
        try:
            if _holder(path).get("pid") in (os.getpid(), None):  # ours, or ours left empty by a full disk
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(f"could not remove {str(path)!r} ({exc.strerror}); the next run here replaces it as stale")
        for folder in made:
            with contextlib.suppress(OSError):  # only an empty folder goes
                folder.rmdir()
