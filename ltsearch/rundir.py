"""The run directory: its config record, its lock, its failure record, and artifact folders with
completion markers (open_lth style: a folder whose marker exists is skipped). Names: `ltsearch.paths`.

A folder without DONE.json is unfinished; its resumable parts (epoch checkpoints) carry their own index.

In a run over several processes every rank holds the same `ArtifactDir` objects; rank 0 writes each
artifact and every rank returns from the write with rank 0's checksum once the file exists
(`ltsearch.distributed.on_main`), so what one rank reads back, every rank can.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import ltsearch.distributed as distributed
from ltsearch.config import flatten
from ltsearch.errors import ArtifactError, ResumeError, UnsafeArtifactError
from ltsearch.locks import open_lock_file, try_lock, unlock
from ltsearch.paths import CLOCK, FAILURE, LOCK, MARKER, RECORD
from ltsearch.storage import atomic_write, load_json, load_torch, save_json, save_torch, sha256_file
from ltsearch.version import __version__

log = logging.getLogger(__name__)


class RunLock:
    """One writer per run directory.

    `flock` is released by the kernel when its holder dies, even by SIGKILL, so a lock left by a killed
    process is stale by construction and is simply taken over; a live holder is reported by pid and host.
    The file names its holder while held and is emptied on a clean release, so a taker that finds a name
    in it knows the previous session was killed, and says so.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None
        self.taken_over = ""  # the holder a stale lock named (a session that was killed), once acquired

    def acquire(self) -> None:
        fd = open_lock_file(self.path)
        try:
            locked = try_lock(fd)
        except OSError as exc:  # e.g. a network filesystem without flock support
            os.close(fd)
            raise ResumeError(f"cannot lock {self.path} ({exc.strerror or exc}); put the run directory on a "
                              f"filesystem that supports file locks") from exc
        if not locked:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ResumeError(
                f"{self.path.parent} is in use by {holder}; one process per run directory "
                f"(wait for it to finish or stop it, then resume)"
            )
        previous = os.pread(fd, 256, 0).decode(errors="replace").strip()
        if previous:
            log.warning("%s: taking over the stale lock of %s, which ended without releasing it (killed?)",
                        self.path.parent, previous)
            self.taken_over = previous
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a clean exit leaves an empty lock file
            unlock(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ArtifactDir:
    """A folder whose artifacts are checksummed and whose completion is marked last: a pipeline stage's
    folder, or a part of one (`search/pretrain`, `search/level_03`, `sanity/shuffle`).

    Folders nest: a child's clock also advances its parent's, so the wall time of a stage includes its
    parts, and time lost to a crash after the last checkpoint is not counted.
    Compute counters (`count`): samples a folder passed through the network forward and backward
    ("train") or forward only ("forward"); results.json turns them into FLOPs and training-epoch
    equivalents of the dense model. A folder counts its own work; its completion marker adds the totals of
    its finished children. A training loop stores `clock_state()` inside its checkpoints and restores it
    with them, so time and counts always match the state a resumed run continues from.
    """

    def __init__(self, path: Path, parent: ArtifactDir | None = None) -> None:
        self.path = Path(path)
        self.parent = parent
        self.name = self.path.name
        self.manifest: dict[str, str] = {}
        self._t0 = time.perf_counter()
        self._prior = 0.0
        self.compute: dict[str, int] = {}

    @property
    def label(self) -> str:
        """The folder's name in messages: `retrain`, or `search/pretrain` for a part of a stage."""
        return self.name if self.parent is None else f"{self.parent.label}/{self.name}"

    # -- lifecycle -------------------------------------------------------------------------------------
    def child(self, name: str) -> ArtifactDir:
        return ArtifactDir(self.path / name, parent=self)

    def start(self) -> ArtifactDir:
        """Begin (or continue) work: restore the time spent by earlier sessions up to their last checkpoint."""
        if distributed.is_main():
            self.path.mkdir(parents=True, exist_ok=True)
        clock = load_json(self.path / CLOCK) if (self.path / CLOCK).exists() else {}
        self._prior = float(clock.get("elapsed", 0.0))
        self.compute = {k: int(v) for k, v in clock.get("compute", {}).items()}
        self._t0 = time.perf_counter()
        return self

    def elapsed(self) -> float:
        return self._prior + time.perf_counter() - self._t0

    def count(self, kind: str, samples: int) -> None:
        """Record `samples` passed through the network ("train": forward + backward, "forward": forward)."""
        self.compute[kind] = self.compute.get(kind, 0) + int(samples)

    def clock_state(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed(), "compute": dict(self.compute)}

    def restore_clock(self, state: dict[str, Any]) -> None:
        """Continue from the time and counts stored with a checkpoint."""
        self._prior = float(state["elapsed"])
        self._t0 = time.perf_counter()
        self.compute = {k: int(v) for k, v in state["compute"].items()}

    def checkpoint_clock(self) -> None:
        """Persist elapsed time and compute; called whenever resumable progress is persisted."""
        save_json(self.path / CLOCK, self.clock_state())
        if self.parent is not None:
            self.parent.checkpoint_clock()

    def total_compute(self) -> dict[str, int]:
        """Own counts plus the totals recorded by finished child folders."""
        total = dict(self.compute)
        for marker in sorted(self.path.glob(f"*/{MARKER}")):
            for kind, samples in load_json(marker).get("compute", {}).items():
                total[kind] = total.get(kind, 0) + int(samples)
        return total

    @property
    def done(self) -> bool:
        return (self.path / MARKER).exists()

    def info(self) -> dict[str, Any]:
        """The completion marker of a finished folder."""
        return load_json(self.path / MARKER)

    def mark_done(self, **extra: Any) -> dict[str, Any]:
        info = {"stage": self.name, "wall_time": self.elapsed(), "compute": self.total_compute(),
                "finished": time.time(), **extra, "artifacts": dict(sorted(self.manifest.items()))}
        distributed.on_main(lambda: save_json(self.path / MARKER, info))
        if self.parent is not None:
            self.parent.checkpoint_clock()
        return info

    # -- artifacts -------------------------------------------------------------------------------------
    def save_tensors(self, name: str, obj: Any) -> Path:
        path = self.path / name
        self.manifest[name] = distributed.on_main(lambda: save_torch(path, obj))
        return path

    def save_bytes(self, name: str, data: bytes) -> Path:
        """An artifact already serialised (a ticket file), written atomically and checksummed like the others."""
        path = self.path / name
        self.manifest[name] = distributed.on_main(lambda: atomic_write(path, data))
        return path

    def save_json(self, name: str, obj: Any) -> Path:
        path = self.path / name
        self.manifest[name] = distributed.on_main(lambda: save_json(path, obj))
        return path

    def load_tensors(self, name: str, map_location: str = "cpu") -> Any:
        """Load an artifact, verified against the checksum its writer recorded."""
        try:
            return load_torch(self.path / name, sha256=self._recorded_sha(name), map_location=map_location)
        except UnsafeArtifactError:
            raise
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}{self._remedy()}") from exc

    def load_json(self, name: str) -> Any:
        path = self.path / name
        sha = self._recorded_sha(name)
        if sha is not None and path.exists() and sha256_file(path) != sha:
            raise ArtifactError(f"{path} is corrupt: its checksum does not match the one recorded when it was "
                                f"written{self._remedy()}")
        try:
            return load_json(path)
        except FileNotFoundError:
            raise ArtifactError(f"{path} is missing{self._remedy()}") from None
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}{self._remedy()}") from exc

    def check_complete(self) -> None:
        """A finished folder still holds every artifact its marker names (one deleted later is reported by
        name, like a damaged one, instead of failing a later stage or report)."""
        for name in self.info().get("artifacts", {}):
            if not (self.path / name).is_file():
                raise ArtifactError(f"{self.path / name} is missing{self._remedy()}")

    def _remedy(self) -> str:
        if not self.done:
            return ""
        return (f"; stage {self.label} is marked complete but this artifact is damaged or gone: delete the folder "
                f"{self.path} (and those of the stages after it) and resume to recompute it")

    def _recorded_sha(self, name: str) -> str | None:
        if name in self.manifest:
            return self.manifest[name]
        if self.done:
            return self.info().get("artifacts", {}).get(name)
        return None


def read_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RECORD
    if not path.exists() and (Path(run_dir) / ".hydra").is_dir():
        raise ResumeError(f"{run_dir} holds no {RECORD}: its run was stopped before it recorded its config; "
                          f"start it again with its original `ltsearch run ...` command and hydra.run.dir={run_dir}")
    if not path.exists():
        raise ResumeError(f"{run_dir} is not an ltsearch run directory (no {RECORD} in it)")
    record = load_json(path)
    if not (isinstance(record, dict) and isinstance(record.get("config"), dict)
            and isinstance(record.get("overrides"), list)):
        raise ResumeError(f"{path} is not a valid ltsearch run record (it lacks 'config' or 'overrides')")
    return record


def write_record(run_dir: Path, config: dict[str, Any], overrides: list[str], label: str) -> None:
    save_json(Path(run_dir) / RECORD, {
        "ltsearch_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "label": label,
        "overrides": overrides,
        "config": config,
    })


def config_diff(recorded: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...],
                defaults: dict[str, Any] | None = None) -> list[str]:
    """Per-key differences, one line each, skipping keys under `ignore` prefixes. A key the record lacks
    (added by a later ltsearch version) is no difference when it holds its default (`defaults`, by
    dotted key): the recorded run computed with that behaviour."""
    old, new = flatten(recorded), flatten(current)
    defaults = defaults or {}
    lines = []
    for key in sorted(set(old) | set(new)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        if key not in old and key in defaults and new.get(key) == defaults[key]:
            continue
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            lines.append(f"  {key}: {a!r} (recorded) -> {b!r} (now)")
    return lines


def write_failure(run_dir: Path, stage: str | None, error: BaseException | str) -> None:
    """failed.json: the stage a session stopped in and why (an exception, or a sentence); rank 0 writes it."""
    if distributed.is_main():
        text = error if isinstance(error, str) else f"{type(error).__name__}: {str(error).strip()}"
        save_json(Path(run_dir) / FAILURE, {"stage": stage, "error": text, "time": time.time()})


def clear_failure(run_dir: Path) -> None:
    if distributed.is_main():
        (Path(run_dir) / FAILURE).unlink(missing_ok=True)
