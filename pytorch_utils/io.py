"""Atomic file writes: a crash or a Colab disconnect mid-write never leaves a half-written file in place."""
import errno
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional, Union

from pytorch_utils.errors import ConfigError, DiskFullError

PathLike = Union[str, os.PathLike]


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


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path`` (same folder: atomic); return ``path``.
    Raises DiskFullError when the disk is full, the file at ``path`` untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # one per writer
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(str(tmp))
        with open(tmp, "rb") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # the half-written copy; the file at ``path`` was never touched
        full = disk_full_error(exc, path)
        if full is None:
            raise
        raise full from None
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
    error.errno = errno.ENOSPC  # ``except OSError as e: e.errno`` keeps working; str() stays one clear line
    return error


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
