"""Faults injected into an ltsearch process, for the bad-input table and the reliability tests.

`installed(name)` injects a fault into this process for a block; `python -m tests.faults NAME ARGS...` runs
`ltsearch ARGS...` in a fresh process with the fault injected (what the bad-input table runs).

- disk_full_in_run / disk_full_in_cache: every file ltsearch creates in the retrain stage's folder / in
  the artifact cache is created (so a partial temporary exists, as on a real full disk), but its bytes go
  to /dev/full, whose writes fail with ENOSPC.
- cache_read_only: the artifact cache refuses every file creation with EROFS, as a read-only mount does.
- disk_full_with_record: disk_full_in_run, and the run's failure record (failed.json) cannot be written either.
- ctrl_c_in_retrain / sigterm_in_retrain: the process sends itself SIGINT / SIGTERM when retraining
  reaches its second epoch, as a user's Ctrl-C or a scheduler's kill would.
- peer_lost_in_retrain: retraining's second epoch fails as a collective fails when another process of the run
  dies, and SIGTERM arrives while the failure is being recorded, as torchrun sends it to the survivors.

`sandboxed(cmd, readonly)` wraps a command so that it runs in its own user and mount namespace with the
given folders bind-mounted read-only (a real read-only filesystem, without privileges); `can_sandbox()`
says whether this machine allows it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path


def _to_dev_full(where: Callable[[Path], bool]) -> Callable[[], None]:
    import ltsearch.storage as storage

    original = storage.open_new

    def open_new(path: Path) -> int:
        fd = original(path)
        if not where(Path(path)):
            return fd
        os.close(fd)  # the temporary exists, empty, as after a failed write on a full disk
        return os.open("/dev/full", os.O_WRONLY)

    storage.open_new = open_new
    return lambda: setattr(storage, "open_new", original)


def _read_only_cache() -> Callable[[], None]:
    import ltsearch.locks as locks
    import ltsearch.storage as storage

    originals = (storage.open_new, locks.open_lock_file)

    def refuse(original: Callable[[Path], int]) -> Callable[[Path], int]:
        def opener(path: Path) -> int:
            if "artifacts" in Path(path).parts:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return original(path)
        return opener

    storage.open_new, locks.open_lock_file = refuse(originals[0]), refuse(originals[1])

    def undo() -> None:
        storage.open_new, locks.open_lock_file = originals

    return undo


def _signal_in_retrain(signum: int) -> Callable[[], None]:
    from ltsearch.training.trainer import Trainer

    original = Trainer.train_epoch
    if signum == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # A process started in the background of a non-interactive shell inherits SIGINT ignored, and Python
        # then installs no KeyboardInterrupt handler; a Ctrl-C at a terminal assumes the interactive default.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def train_epoch(self, epoch, *args, **kwargs):
        if self.stream == "retrain" and epoch == 1:
            os.kill(os.getpid(), signum)
        return original(self, epoch, *args, **kwargs)

    Trainer.train_epoch = train_epoch
    return lambda: setattr(Trainer, "train_epoch", original)


def _peer_lost_in_retrain() -> Callable[[], None]:
    import ltsearch.rundir as rundir
    from ltsearch.training.trainer import Trainer

    original_epoch, original_save = Trainer.train_epoch, rundir.save_json

    def train_epoch(self, epoch, *args, **kwargs):
        if self.stream == "retrain" and epoch == 1:  # what gloo raises in a collective whose peer died
            raise RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer")
        return original_epoch(self, epoch, *args, **kwargs)

    def save_json(path, *args, **kwargs):
        if Path(path).name == "failed.json":
            os.kill(os.getpid(), signal.SIGTERM)  # the launcher stops the survivors
        return original_save(path, *args, **kwargs)

    Trainer.train_epoch, rundir.save_json = train_epoch, save_json

    def undo() -> None:
        Trainer.train_epoch, rundir.save_json = original_epoch, original_save

    return undo


FAULTS: dict[str, Callable[[], Callable[[], None]]] = {
    "disk_full_in_run": lambda: _to_dev_full(lambda p: "retrain" in p.parts and "artifacts" not in p.parts),
    "disk_full_in_cache": lambda: _to_dev_full(lambda p: "artifacts" in p.parts),
    "disk_full_with_record": lambda: _to_dev_full(lambda p: ("retrain" in p.parts or p.name.startswith(".failed.json"))
                                                  and "artifacts" not in p.parts),
    "cache_read_only": _read_only_cache,
    "ctrl_c_in_retrain": lambda: _signal_in_retrain(signal.SIGINT),
    "sigterm_in_retrain": lambda: _signal_in_retrain(signal.SIGTERM),
    "peer_lost_in_retrain": _peer_lost_in_retrain,
}


@contextlib.contextmanager
def installed(name: str) -> Iterator[None]:
    undo = FAULTS[name]() if name else (lambda: None)
    try:
        yield
    finally:
        undo()


def command(fault: str, args: list[str]) -> list[str]:
    """The command line of `ltsearch ARGS` with `fault` injected (run it from the repository root)."""
    if not fault:
        return [sys.executable, "-m", "ltsearch", *args]
    return [sys.executable, "-m", "tests.faults", fault, *args]


# -- read-only folders without privileges ----------------------------------------------------------------------------
_MOUNT_READ_ONLY = 'for d in $LTSEARCH_READ_ONLY; do mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" || exit 97; done; exec "$@"'


def sandboxed(cmd: list[str], readonly: list[Path]) -> tuple[list[str], dict[str, str]]:
    """`cmd` run with the folders `readonly` mounted read-only (no spaces in their paths), and the
    environment it needs."""
    return (["unshare", "-Urm", "sh", "-c", _MOUNT_READ_ONLY, "sh", *cmd],
            {"LTSEARCH_READ_ONLY": " ".join(str(p) for p in readonly)})


def can_sandbox() -> bool:
    try:
        probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs none /mnt 2>/dev/null || "
                                "mount -t tmpfs none /tmp"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


if __name__ == "__main__":
    with installed(sys.argv[1]):
        from ltsearch.cli import main

        sys.argv = ["ltsearch", *sys.argv[2:]]
        sys.exit(main(sys.argv[1:]))
