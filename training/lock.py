"""One writer at a time: an exclusive lock on a model directory for the whole of a command.

The lock is an flock on <model>/.lock, which the kernel releases when its
process ends however it ends, so a killed writer never leaves a stale lock;
the file holds the holder's process id, for the message a second writer gets.
A folder that the lock created and nothing else filled is removed again.
"""

import contextlib
import fcntl
import os
from pathlib import Path

from utils import DataError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def exclusive(model_dir):
    """Hold the lock of `model_dir` (created if missing) for the `with` block; DataError if another process does."""
    model_dir = Path(model_dir)
    created = not model_dir.exists()
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(model_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise DataError(f"cannot lock {model_dir}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DataError(f"{model_dir} is in use by another command (process {holder}); wait for it to end, "
                            "or pick another --model-path") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)  # no process id of an ended holder stays behind
    finally:
        os.close(descriptor)  # releases the lock
        if created and [path.name for path in model_dir.iterdir()] == [LOCK_FILE]:
            (model_dir / LOCK_FILE).unlink()  # a run that failed before writing anything leaves no folder behind
            model_dir.rmdir()
