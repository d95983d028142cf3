"""File locks (`flock`) for run folders, cache entries and sweep summaries.

`flock` is released by the kernel when its holder dies, even by SIGKILL, so a lock never outlives its
process: there is no stale-lock cleanup to get wrong. Network filesystems without flock support raise
OSError, which callers turn into a message.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_lock_file(path: Path) -> int:
    """Open (create) a lock file for reading and writing; the caller closes the descriptor."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def try_lock(fd: int) -> bool:
    """Take an exclusive lock without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def exclusive(path: Path) -> Iterator[int]:
    """Hold an exclusive lock on `path` for the block, waiting for any other holder first."""
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_held(path: Path) -> bool:
    """Whether some process holds a lock on `path` right now (a missing file is not held)."""
    if not Path(path).exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
