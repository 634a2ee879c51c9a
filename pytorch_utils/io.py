"""Atomic file writes: a crash or a Colab disconnect mid-write never leaves a half-written file in place."""
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

from pytorch_utils.errors import ConfigError, DiskFullError

PathLike = Union[str, os.PathLike]
_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_writable_dir(path: PathLike) -> Path:
    """Create ``path`` (and parents) if needed; ConfigError (path and OS reason) when it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"output directory {str(path)!r} is not writable ({exc.strerror or exc}); "
                          "choose another out_dir") from None
    return path


def check_writable_dir(path: PathLike) -> Path:
    """Check, creating nothing, that ``path`` is or can become a writable directory (before a run does any work);
    ConfigError when a file is in the way or the nearest existing folder is not writable."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"output directory {str(path)!r} is not writable ({str(probe)!r} is a file, not a folder); "
                          "choose another out_dir")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {str(path)!r} is not writable (no write permission in {str(probe)!r}); "
                          "choose another out_dir")
    return path


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path`` (same folder: atomic); return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)  # the half-written copy; the file at ``path`` was never touched
        full = disk_full_error(exc, path)
        if full is not None:
            raise full from None
        raise
    return path


def disk_full_error(exc: BaseException, path: PathLike) -> Optional[DiskFullError]:
    """A one-line :class:`DiskFullError` when ``exc`` means "no space left" while writing ``path``, else None
    (OSError ENOSPC / EDQUOT, or the RuntimeError of torch's zip writer: torch/csrc/.../inline_container.cc)."""
    if isinstance(exc, OSError):
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    else:
        full = isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "file write failed" in str(exc))
    if not full:
        return None
    path = Path(path)
    error = DiskFullError(f"no space left on the disk holding {str(path.parent)!r} while writing {path.name!r}; "
                          "free space or choose another out_dir (files written before are intact)")
    error.errno = errno.ENOSPC  # ``except OSError as e: e.errno`` keeps working; str() stays one clean line
    return error


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
