"""Atomic writes: a reader sees the old file or the new one, never half of one."""

import glob
import os
import tempfile
from pathlib import Path

from utils import DataError

_TEMPORARY_MARK = ".tmp"


def _temporary_prefix(path):
    """How the names of :func:`atomic_write`'s temporaries of `path` begin: hidden, beside `path`."""
    return f".{path.name}."


def atomic_write(path, write, temporary_folder=None):
    """Call write(temporary_path), then rename it onto `path`: readers see the old or the new file, never half.

    A symbolic link at `path` is written through, not replaced.  The temporary
    lies beside `path`, or in `temporary_folder` (on the same file system) where
    a reader of `path`'s folder, such as TensorBoard, must never see it.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=temporary_folder or folder, prefix=_temporary_prefix(path),
                                                 suffix=_TEMPORARY_MARK + "".join(path.suffixes))
        os.close(descriptor)
    except OSError as error:
        raise DataError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path):
    """Delete what an :func:`atomic_write` of `path` killed mid-way (SIGKILL, power loss) left behind.

    Only one process may write a given path, so any such file is stale.
    """
    path = Path(path)
    for leftover in path.parent.glob(f"{glob.escape(_temporary_prefix(path))}*{_TEMPORARY_MARK}*"):
        leftover.unlink(missing_ok=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text):
    atomic_write(path, lambda temporary: Path(temporary).write_text(text))


def check_writable(path):
    """Fail early, with a clear message, when `path` cannot be created."""
    folder = Path(path).resolve().parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"cannot write {path}: {existing} is not a writable folder")
