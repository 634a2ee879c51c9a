"""Every file the package writes goes through :func:`atomic_write` (a fresh temporary, then an atomic rename): a Colab
disconnect mid-write leaves no half-written file, and a symlink planted in a run folder is never written through."""
import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

from pytorch_utils.errors import ConfigError, DiskFullError

PathLike = Union[str, os.PathLike]
MAX_ZIP_DIRECTORY = 32 << 20  # bytes of a zip's file list (central directory) read at most: CIFAR-10's 60,000 images
# take 4 MB; zipfile keeps 0.4-1.4 kB per entry of at least 46 bytes there, so at most ~730,000 entries, under 1 GB
RUN_FILE_BYTES = 64 << 20  # a run folder's history or run.json read at most (1,000 epochs of history: about 1 MB)
DRIVE_ROOTS = ("MyDrive", "Shareddrives")  # the folders of a mounted Google Drive (Colab: /content/drive/MyDrive)
_UMASK = os.umask(0o022)  # read once (setting it is process-wide): new files get 0o666 & ~umask, as open() gives
os.umask(_UMASK)


def not_writable_error(folder: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"output directory {str(folder)!r} is not writable ({exc.strerror or exc}); "
                       "choose another out_dir")


def ensure_writable_dir(path: PathLike, parents: bool = True) -> Path:
    """Create ``path`` (and, with ``parents``, its parents) if needed; ConfigError (path and OS reason) when it cannot
    be written, or when it lies in an unmounted Google Drive. Called once where a run or report starts: later writes
    never create folders."""
    path = Path(path)
    drive = next((p for p in (path, *path.parents) if p.name in DRIVE_ROOTS and not p.is_dir()), None)
    if drive is not None:  # a local copy would vanish with the VM, and drive.mount refuses a non-empty mount point
        raise ConfigError(f"{str(drive)!r} does not exist: mount Google Drive first, or choose another out_dir")
    try:
        path.mkdir(parents=parents, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise not_writable_error(path, exc) from None
    return path


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a fresh temporary in ``path``'s folder (``mkstemp``: exclusive, unguessable name,
    no link followed), then rename it over ``path`` (a symlink there is replaced, never written through); return
    ``path``. The folder must exist: none is created (an unmounted Drive is not re-created locally). Raises ConfigError
    (folder missing or read-only, a folder at ``path``) or DiskFullError; on failure the temporary is removed."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise (disk_full_error(exc, path) or not_writable_error(path.parent, exc)) from None
    try:
        with contextlib.suppress(OSError):  # some mounted drives refuse chmod; the file is still ours
            os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
        write(tmp)
        with open(os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:  # on disk before the rename shows it
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # the half-written copy; the file at ``path`` was never touched
        error = disk_full_error(exc, path) or isinstance(exc, IsADirectoryError) and ConfigError(
            f"{str(path)!r} is a folder, where a file must be written: remove or rename that folder")
        if not error:
            raise
        raise error from None
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


def zip_directory_bytes(path: PathLike) -> int:
    """The size of the file list (central directory) that a zip's end records declare, read before zipfile builds an
    object per entry: zip64's record where every zipfile version reads it (just before its locator), else the
    largest of the end record's and zip64's at its locator's offset (Python 3.13 reads that one); 0 without an end
    record (zipfile then calls the file no zip). OSError: the file cannot be read."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(0, size - 22 - (1 << 16) - 76)  # end record, its comment, zip64's record and locator
        fh.seek(start)
        tail = fh.read()
        end = len(tail) - 22  # zipfile's first guess: an end record without a comment
        if tail[end:end + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
            end = tail.rfind(b"PK\x05\x06")
        if end < 0:
            return 0
        sizes = [int.from_bytes(tail[end + 12:end + 16], "little")]
        if end >= 20 and tail[end - 20:end - 16] == b"PK\x06\x07":
            before = start + end - 20 - 56
            for where in (int.from_bytes(tail[end - 12:end - 4], "little"), before):
                fh.seek(where if 0 <= where <= size - 56 else size)  # an offset outside the file reads nothing
                record = fh.read(56)
                if record[:4] == b"PK\x06\x06":
                    sizes.append(int.from_bytes(record[40:48], "little"))
                    if where == before:  # then every version uses zip64's size (Go writes 0xFFFFFFFF in the other)
                        sizes[0] = 0
    return max(sizes)


def read_run_file(path: PathLike, limit: int = RUN_FILE_BYTES) -> str:
    """A small UTF-8 file the package wrote (history, run.json, an export's metadata), read no further than ``limit``
    bytes: a huge file planted in a stranger's folder costs no memory. ValueError: longer, or not UTF-8; OSError:
    unreadable."""
    with open(path, "rb") as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"over {limit:,} bytes, far more than the package writes")
    return raw.decode("utf-8")
