"""Atomic file writes: a crash or a Colab disconnect mid-write never leaves a half-written file in place."""
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

from pytorch_utils.errors import ConfigError

PathLike = Union[str, os.PathLike]
_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_writable_dir(path: PathLike) -> Path:
    """Create ``path`` (and parents) if needed and check that files can be written there.

    Raises:
        ConfigError: the directory cannot be created or written (names the path and the OS reason).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"output directory {str(path)!r} is not writable ({exc.strerror or exc}); "
                          "choose another --out-dir / out_dir") from None
    return path


def check_writable_dir(path: PathLike) -> Path:
    """Check, without creating anything, that ``path`` is or can become a writable directory.

    Used before a run does any work, so a bad ``--out-dir`` fails in a second instead of after training, and a run
    that fails for another reason leaves no empty folder behind.

    Raises:
        ConfigError: a file is in the way, or the nearest existing folder is not writable.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"output directory {str(path)!r} is not writable ({str(probe)!r} is a file, not a folder); "
                          "choose another --out-dir / out_dir")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {str(path)!r} is not writable (no write permission in {str(probe)!r}); "
                          "choose another --out-dir / out_dir")
    return path


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path`` (same directory, so the rename is atomic).

    Returns:
        the final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, write)
