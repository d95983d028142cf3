"""File locks (`flock`) for run folders, cache entries and sweep summaries.

`flock` is released by the kernel when its holder dies, even by SIGKILL, so a lock never outlives its
process: there is no stale-lock cleanup to get wrong. Network filesystems without flock support raise
OSError, which callers turn into a message. A lock file is never opened through a symbolic link (a run
lock is truncated and rewritten, so a link planted at its name would clobber the link's target).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ltsearch.errors import UnsafePathError


def open_lock_file(path: Path) -> int:
    """Open (create) a lock file for reading and writing; the caller closes the descriptor."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        if Path(path).is_symlink():
            raise UnsafePathError(f"{path} is a symbolic link (to {os.readlink(path)}); ltsearch never opens its "
                                  f"lock files through links: remove the link and run again") from None
        raise


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
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # a link or an unreadable file: nobody holds it through ltsearch
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
