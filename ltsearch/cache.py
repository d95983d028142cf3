"""A content-addressed cache of upstream work shared between runs.

Runs that share an upstream config (model, dataset, train schedule, seed, numerics) compute the same
dense pretraining to the rewind point, and LTR/IMP runs to different sparsities share every level before
their last one. Such a stage folder is a pure function of a `spec` (a JSON-able dict), so it is stored
once under `<cache_dir>/<kind>/<sha256 of spec>/` and copied into later runs instead of being recomputed.

- Safe under concurrent jobs: a job that needs an entry takes an exclusive `flock` on the entry's lock
  file first, so a second job needing the same entry waits for the first and then reuses its result
  (the kernel releases the lock of a killed job). Entries are published by renaming a complete folder
  into place, so a reader never sees half an entry.
- In a run over several processes rank 0 alone takes the lock, reads and writes the cache; the other ranks
  wait with it (meeting it every few seconds, so a long wait outlasts no collective timeout) and compute
  with it when the entry has to be computed.
- Reuse is logged; `runtime.cache=false` turns it off. The location is `runtime.cache_dir`
  (default: $LTSEARCH_CACHE/artifacts, else ~/.cache/ltsearch/artifacts; `ltsearch.paths`).
- A cache on a shared filesystem is not trusted: an entry restores only the files its record names, each a
  plain relative name inside the entry (no `..`, no absolute path, no symbolic link on the way), each
  checked against the SHA-256 recorded when it was published. An entry that fails any of this is named in
  a warning, evicted (when the cache is writable; skipped otherwise) and computed again.
- The cache never fails a run: one that cannot be written (read-only, no flock) is used read-only, and a
  copy that cannot be stored (disk full) is dropped with its temporary folder; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import ltsearch.distributed as distributed
import ltsearch.locks as locks
from ltsearch.errors import ArtifactError, UnsafePathError
from ltsearch.paths import CACHE_SPEC, MARKER, TMP_MARK
from ltsearch.rundir import ArtifactDir
from ltsearch.storage import copy_verified, load_json, save_json
from ltsearch.version import __version__

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def spec_key(kind: str, spec: dict[str, Any]) -> str:
    text = json.dumps({"kind": kind, "ltsearch": __version__, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class ArtifactCache:
    root: Path
    enabled: bool = True

    def reuse_or_compute(self, kind: str, spec: dict[str, Any], out: ArtifactDir,
                         compute: Callable[[], None]) -> bool:
        """Make `out` complete: copy it from the cache entry of (kind, spec) if there is a sound one, else run
        `compute()` (which must complete `out`, i.e. end with `out.mark_done`) and publish the result.
        Returns True when the result was reused."""
        if out.done:
            return False
        if not self.enabled:
            compute()
            return False
        key = spec_key(kind, spec)
        entry = self.root / kind / key
        # blocking: a job that needs an entry another job is computing waits for it, then reuses it
        with self._entry_lock(self.root / kind / f"{key}.lock") as writable:
            if distributed.on_main(lambda: _entry_exists(entry) and self._reuse(entry, out, key, writable)):
                return True
            compute()
            if writable:
                distributed.on_main(lambda: _publish(entry, out, kind, spec))
            return False

    @contextmanager
    def _entry_lock(self, path: Path) -> Iterator[bool]:
        """Hold an entry's lock for the block; yields whether the cache may be written (one that cannot be
        locked is used read-only). In a distributed run rank 0 alone holds it, see the module doc."""
        if distributed.world_size() == 1:
            with ExitStack() as stack:
                yield self._attempt(lambda: stack.enter_context(locks.exclusive(path)) >= 0) is True
            return
        fd = -1

        def attempt() -> bool:
            nonlocal fd
            fd = locks.open_lock_file(path) if fd < 0 else fd
            return locks.try_lock(fd)

        while (locked := distributed.on_main(lambda: self._attempt(attempt))) is False:
            time.sleep(2.0)
        try:
            yield locked is True
        finally:
            if fd >= 0:
                locks.unlock(fd)
                os.close(fd)

    def _attempt(self, lock: Callable[[], bool]) -> bool | None:
        """`lock()` (True: held, False: held by another job); None when the cache cannot be locked."""
        try:
            return lock()
        except (OSError, UnsafePathError) as exc:
            log.warning("artifact cache %s cannot be locked or written (%s): it is used read-only, and what "
                        "this run computes is not stored", self.root, getattr(exc, "strerror", None) or exc)
            return None

    def _reuse(self, entry: Path, out: ArtifactDir, key: str, writable: bool) -> bool:
        """Restore a sound entry into `out`; a broken one is named, evicted (or skipped) and recomputed."""
        try:
            info = _restore(entry, out, key)
        except ArtifactError as exc:
            action = "evicted" if writable and _evict(entry) else "skipped"
            log.warning("artifact cache entry %s is unusable (%s); %s, computing %s again", entry, exc, action,
                        out.label)
            return False
        log.info("%s: reused from the cache (%s %s, computed in %.1fs)", out.label, entry.parent.name, key[:12],
                 float(info.get("wall_time") or 0))
        return True


def _entry_exists(entry: Path) -> bool:
    return entry.is_symlink() or (entry / MARKER).exists() or (entry / MARKER).is_symlink()


def _inside(entry: Path, name: object) -> Path:
    """The file `name` of a cache record inside `entry`: a relative path of plain components, none of them
    a link, or ArtifactError."""
    parts = PurePosixPath(name).parts if isinstance(name, str) and "\0" not in name else ()
    if not parts or PurePosixPath(name).is_absolute() or any(p in ("", ".", "..") for p in parts) or \
            str(PurePosixPath(*parts)) != name:
        raise ArtifactError(f"its record names the file {name!r}, which is not a plain name inside the entry")
    path = entry
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise ArtifactError(f"{path} is a symbolic link")
    return path


def _record(entry: Path) -> dict[str, Any]:
    """The entry's completion marker, checked: a dict whose artifacts map plain names to SHA-256 digests."""
    if entry.is_symlink():
        raise ArtifactError(f"{entry} is a symbolic link")
    marker = _inside(entry, MARKER)
    info = load_json(marker)
    artifacts = info.get("artifacts") if isinstance(info, dict) else None
    if not isinstance(artifacts, dict) or not all(isinstance(v, str) and _SHA256.fullmatch(v)
                                                  for v in artifacts.values()):
        raise ArtifactError(f"{marker} is not a completion record (no artifact checksums)")
    return info


def _restore(entry: Path, out: ArtifactDir, key: str) -> dict[str, Any]:
    """Copy the entry's files into `out`, each checked against its checksum; the completion marker comes
    last and records the reuse."""
    info = _record(entry)
    sources = {name: _inside(entry, name) for name in info["artifacts"]}
    out.path.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        copy_verified(source, out.path / name, info["artifacts"][name])
    reused = {"key": key, "wall_time": info.get("wall_time"), "compute": info.get("compute")}
    save_json(out.path / MARKER, {**info, "wall_time": 0.0, "compute": {}, "reused": reused})
    return info


def _evict(entry: Path) -> bool:
    """Remove a broken entry (a link is removed itself, never what it points to); False if that failed."""
    try:
        if entry.is_symlink():
            entry.unlink()
        else:
            shutil.rmtree(entry)
    except OSError:
        return False
    return True


def _publish(entry: Path, out: ArtifactDir, kind: str, spec: dict[str, Any]) -> None:
    """Copy a completed stage folder's artifacts and marker into the cache, atomically (rename). A copy
    that cannot be stored (disk full, read-only) is dropped with its temporary folder: the run goes on."""
    info = out.info()
    tmp = entry.parent / f".{entry.name}{TMP_MARK}{os.getpid()}"
    try:
        for stale in entry.parent.glob(f".{entry.name}{TMP_MARK}*"):  # of killed publishers (we hold the lock)
            _evict(stale)
        tmp.mkdir(parents=True)
        for name, sha in info.get("artifacts", {}).items():
            copy_verified(out.path / name, tmp / name, sha)
        save_json(tmp / CACHE_SPEC, {"kind": kind, "spec": spec})
        copy_verified(out.path / MARKER, tmp / MARKER)
        # an incomplete leftover, or an entry that could not be evicted
        if (entry.exists() or entry.is_symlink()) and not _evict(entry):
            raise OSError(f"cannot replace {entry}")
        os.replace(tmp, entry)
    except (OSError, ArtifactError) as exc:
        _evict(tmp)
        reason = getattr(exc, "strerror", None) or str(exc)
        log.warning("%s: could not store a copy in the artifact cache %s (%s); the run goes on, a later run "
                    "computes it again", out.label, entry.parent.parent, reason)
