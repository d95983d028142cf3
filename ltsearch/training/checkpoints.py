"""Epoch checkpoints with an index of checksums and a fallback to the previous good one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ltsearch.distributed as distributed
from ltsearch.errors import ArtifactError, UnsafeArtifactError
from ltsearch.storage import load_json, load_torch, save_json, save_torch

log = logging.getLogger(__name__)
INDEX = "index.json"


class Checkpoints:
    """`folder/epoch_NNNN.pt` files plus `folder/index.json` (epoch, file, sha256), newest last.

    The checkpoint file is written (atomically) before the index names it, so the index never points at a
    partial file; a file damaged later fails its checksum and `latest()` falls back to an older one. A file
    that would need arbitrary unpickling is not skipped but refused (UnsafeArtifactError): it was planted.
    """

    def __init__(self, folder: Path, keep: int = 2) -> None:
        self.folder = Path(folder)
        self.keep = keep

    def _entries(self) -> list[dict[str, Any]]:
        index = self.folder / INDEX
        if not index.exists():
            return []
        try:
            return [{"epoch": int(e["epoch"]), "file": str(e["file"]), "sha256": str(e["sha256"])}
                    for e in load_json(index)["checkpoints"]]
        except (ArtifactError, KeyError, TypeError, ValueError):
            log.warning("checkpoint index %s is unreadable; starting this phase from its beginning", index)
            return []

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        """Write (rank 0 only: the other ranks of a distributed run hold the same state) and prune old files."""
        if not distributed.is_main():
            return
        name = f"epoch_{epoch:04d}.pt"
        sha = save_torch(self.folder / name, state)
        entries = [e for e in self._entries() if e["epoch"] != epoch] + [{"epoch": epoch, "file": name, "sha256": sha}]
        entries.sort(key=lambda e: e["epoch"])
        entries = entries[-self.keep:]
        save_json(self.folder / INDEX, {"checkpoints": entries})
        # Files the index no longer names: older epochs, and any left by a session killed between writing a
        # checkpoint and updating the index.
        named = {e["file"] for e in entries}
        for path in self.folder.glob("epoch_*.pt"):
            if path.name not in named:
                path.unlink(missing_ok=True)

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads and matches its checksum, or None."""
        entries = self._entries()
        for entry in reversed(entries):
            path = self.folder / entry["file"]
            try:
                state = load_torch(path, sha256=entry["sha256"])
            except UnsafeArtifactError:
                raise
            except ArtifactError as exc:
                log.warning("%s; falling back to an earlier checkpoint", exc)
                continue
            if not isinstance(state, dict) or int(state.get("epoch", -1)) != int(entry["epoch"]):
                log.warning("%s does not hold epoch %s; falling back to an earlier checkpoint", path, entry["epoch"])
                continue
            return state
        if entries:
            log.warning("no usable checkpoint in %s; this phase starts again from its beginning", self.folder)
        return None
