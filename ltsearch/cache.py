"""A content-addressed cache of upstream work shared between runs.

Runs that share an upstream config (model, dataset, train schedule, seed, numerics) compute the same
dense pretraining to the rewind point, and LTR/IMP runs to different sparsities share every level before
their last one. Such a stage folder is a pure function of a `spec` (a JSON-able dict), so it is stored
once under `<cache_dir>/<kind>/<sha256 of spec>/` and copied into later runs instead of being recomputed.

- Safe under concurrent jobs: a job that needs an entry takes an exclusive `flock` on the entry's lock
  file first, so a second job needing the same entry waits for the first and then reuses its result
  (the kernel releases the lock of a killed job). Entries are published by renaming a complete folder
  into place, so a reader never sees half an entry.
- Reuse is logged; `runtime.cache=false` turns it off. The location is `runtime.cache_dir`
  (default: $LTSEARCH_CACHE/artifacts, else ~/.cache/ltsearch/artifacts; `ltsearch.paths`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltsearch import locks
from ltsearch.paths import CACHE_SPEC, MARKER, TMP_MARK
from ltsearch.rundir import ArtifactDir
from ltsearch.storage import load_json, save_json
from ltsearch.version import __version__

log = logging.getLogger(__name__)


def spec_key(kind: str, spec: dict[str, Any]) -> str:
    text = json.dumps({"kind": kind, "ltsearch": __version__, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class ArtifactCache:
    root: Path
    enabled: bool = True

    def reuse_or_compute(self, kind: str, spec: dict[str, Any], out: ArtifactDir,
                         compute: Callable[[], None]) -> bool:
        """Make `out` complete: copy it from the cache entry of (kind, spec) if there is one, else run
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
        with locks.exclusive(self.root / kind / f"{key}.lock"):
            if (entry / MARKER).exists():
                _restore(entry, out, key)
                log.info("%s: reused from the cache (%s %s, computed %s)", out.label, kind, key[:12],
                         f"in {load_json(entry / MARKER).get('wall_time', 0):.1f}s")
                return True
            compute()
            _publish(entry, out, kind, spec)
            return False


def _restore(entry: Path, out: ArtifactDir, key: str) -> None:
    """Copy the entry's files into `out`; the completion marker comes last and records the reuse."""
    out.path.mkdir(parents=True, exist_ok=True)
    info = load_json(entry / MARKER)
    for name in info.get("artifacts", {}):
        target = out.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry / name, target)
    reused = {"key": key, "wall_time": info.get("wall_time"), "compute": info.get("compute")}
    save_json(out.path / MARKER, {**info, "wall_time": 0.0, "compute": {}, "reused": reused})


def _publish(entry: Path, out: ArtifactDir, kind: str, spec: dict[str, Any]) -> None:
    """Copy a completed stage folder's artifacts and marker into the cache, atomically (rename)."""
    info = out.info()
    tmp = entry.parent / f".{entry.name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in info.get("artifacts", {}):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out.path / name, tmp / name)
    save_json(tmp / CACHE_SPEC, {"kind": kind, "spec": spec})
    shutil.copyfile(out.path / MARKER, tmp / MARKER)
    if entry.exists():  # an incomplete leftover (no marker): replace it
        shutil.rmtree(entry)
    os.replace(tmp, entry)
