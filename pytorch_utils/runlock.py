"""A lock on a run's output folder, so two runs never write into one folder at the same time. The lock is
``<out_dir>/.lock``, created with ``O_CREAT | O_EXCL``, holding JSON ``{"pid", "host", "started", "pid_start"}``.
It is live while its process runs (same host: the pid exists and started at the recorded time, so a reused pid does
not count; another host, e.g. a shared Drive folder: while the heartbeat keeps its mtime fresh)."""
import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from pytorch_utils.errors import RunLockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0  # the holder touches the lock this often ...
FOREIGN_STALE_S = 120.0  # ... so a lock from another host untouched this long belongs to a dead run
_HELD: set = set()  # lock paths this process holds (a second run_recipe into the same folder from a thread)
_SCOPES = threading.local()


def _pid_start(pid: int) -> Optional[str]:
    """The process start time in clock ticks since boot (Linux /proc, field 22), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces: split after it
    return None if fields[0] == "Z" else fields[19]  # a zombie has exited


def _pid_alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    now = _pid_start(pid)
    if Path("/proc").is_dir() and now is None:
        return False  # gone or a zombie
    return start is None or now is None or now == start


def read_lock(path: Path) -> Optional[Dict[str, Any]]:
    """The holder recorded in ``path`` (dict), ``{}`` when unreadable (a kill mid-write), None if absent."""
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def lock_is_live(path: Path, info: Dict[str, Any]) -> bool:
    """Whether the run recorded in ``info`` (read from ``path``) is still going."""
    if not isinstance(info.get("pid"), int):
        return False  # garbage or half-written: no run can be identified, so none can be hurt
    if info.get("host") != socket.gethostname():
        try:
            return time.time() - path.stat().st_mtime < FOREIGN_STALE_S
        except FileNotFoundError:
            return False
    if info["pid"] == os.getpid():
        return str(path) in _HELD
    return _pid_alive(info["pid"], info.get("pid_start"))


class RunLock:
    """The lock on ``out_dir`` (created with its parents; removed on release if left empty): ``with RunLock(d):``
    or :meth:`acquire` (RunLockedError when a live run holds it) / :meth:`release`."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self._created: List[Path] = []
        self._stop = threading.Event()

    def acquire(self) -> "RunLock":
        missing = [p for p in [self.out_dir, *self.out_dir.parents] if not p.exists()]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first, the order to remove them in
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "pid_start": _pid_start(os.getpid())}
        for _ in range(5):  # each round either creates the lock, refuses, or clears one stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            _HELD.add(str(self.path))
            threading.Thread(target=self._heartbeat, daemon=True, name="pytorch_utils-runlock").start()
            return self
        raise RunLockedError(f"could not take the lock {str(self.path)!r}: other runs keep starting in "
                             f"{str(self.out_dir)!r}; choose another out_dir")

    def _clear_stale(self) -> None:
        """Remove the existing lock when its run is dead; raise RunLockedError when it is live."""
        holder = read_lock(self.path)
        if holder is None:
            return  # released in the meantime: try again
        if lock_is_live(self.path, holder):
            raise RunLockedError(f"{str(self.out_dir)!r} is in use by a running run (pid {holder['pid']} on "
                                 f"{holder.get('host')}, started {holder.get('started')}); wait for it to finish, stop "
                                 f"it, or choose another out_dir (if no such run exists, delete {str(self.path)!r})")
        # Rename first (atomic: of two runs clearing the same stale lock only one succeeds), then drop it.
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if read_lock(aside) != holder:  # a live run replaced the stale lock in between: put its lock back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        else:
            who = f"pid {holder['pid']} on {holder.get('host')}" if holder.get("pid") else "an unreadable lock"
            log.info(f"removed a stale lock in {str(self.out_dir)!r} ({who} is no longer running)")
        aside.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Remove the lock (when it is still ours) and the folders acquire created, if the run left them empty."""
        self._stop.set()
        if str(self.path) in _HELD and (read_lock(self.path) or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        _HELD.discard(str(self.path))
        for folder in self._created:
            try:
                folder.rmdir()  # only succeeds when empty: a failed run leaves no empty folder behind
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_run_lock(out_dir) -> RunLock:
    """Take the lock on ``out_dir`` (RunLockedError when live); released when the enclosing
    :func:`releases_run_locks` function ends, otherwise call ``.release()``."""
    lock = RunLock(out_dir).acquire()
    scopes = getattr(_SCOPES, "stack", None)
    if scopes:
        scopes[-1].append(lock)
    return lock


def releases_run_locks(fn):
    """Decorator: locks taken with :func:`acquire_run_lock` during a call of ``fn`` are released when it ends."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stack = _SCOPES.__dict__.setdefault("stack", [])
        stack.append([])
        try:
            return fn(*args, **kwargs)
        finally:
            for lock in reversed(stack.pop()):
                lock.release()

    return wrapper
