"""`ltsearch cache ls` / `ltsearch cache clear`: what the caches hold, how big and how old, and removing it.

Two caches live under `ltsearch.paths.cache_root()`: the artifact cache (`artifacts/<kind>/<key>/`: dense
pretraining, IMP levels; shared by runs with the same upstream config) and decoded datasets (image folders
decoded once). Everything in them can be recomputed; clearing costs only the time to recompute it. An
artifact entry that a running job holds (its lock) is left alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from ltsearch.locks import open_lock_file, try_lock, unlock
from ltsearch.paths import CACHE_SPEC, MARKER, TMP_MARK, artifact_cache_dir, cache_root
from ltsearch.runtime import write
from ltsearch.storage import load_json
from ltsearch.tables import compact_table, dataset_label, model_label

DATA_KIND = "data"


@dataclass
class Entry:
    kind: str
    name: str
    path: Path
    size: int
    modified: float
    what: str

    @property
    def lock(self) -> Path | None:
        return None if self.kind == DATA_KIND else self.path.parent / f"{self.path.name}.lock"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _describe(spec: dict[str, Any]) -> str:
    """What an artifact entry is, from its spec: model, data, seed, epochs or IMP level."""
    inner = spec.get("spec", {})
    parts = []
    if isinstance(inner.get("model"), dict) and isinstance(inner.get("dataset"), dict):
        parts.append(f"{model_label(inner['model'])} on {dataset_label(inner['dataset'])}")
    if "seed" in inner:
        parts.append(f"seed {inner['seed']}")
    if "level" in inner:
        parts.append(f"IMP level {inner['level']} ({inner.get('kept', '?')} kept)")
    elif "epochs" in inner:
        parts.append(f"{inner['epochs']} epoch{'s' if inner['epochs'] != 1 else ''}")
    return ", ".join(parts) or "?"


def artifact_entries(root: Path) -> list[Entry]:
    """Finished entries of the artifact cache (an entry being computed has no marker yet)."""
    found = []
    for marker in sorted(root.glob(f"*/*/{MARKER}")):
        entry = marker.parent
        if entry.name.startswith(".") or TMP_MARK in entry.name:
            continue
        try:
            what = _describe(load_json(entry / CACHE_SPEC))
        except Exception:  # an entry without a readable spec is still listed (and clearable)
            what = "?"
        found.append(Entry(entry.parent.name, entry.name, entry, _size(entry), marker.stat().st_mtime, what))
    return found


def data_entries(root: Path, artifacts: Path) -> list[Entry]:
    """Decoded datasets and anything else beside the artifact cache in the cache root."""
    if not root.is_dir():
        return []
    return [Entry(DATA_KIND, p.name, p, _size(p), p.stat().st_mtime, "decoded dataset")
            for p in sorted(root.iterdir()) if p.resolve() != artifacts.resolve() and not p.name.startswith(".")]


def entries(artifacts: Path) -> list[Entry]:
    return artifact_entries(artifacts) + data_entries(cache_root(), artifacts)


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def human_age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{seconds:.0f}s"


def parse_age(text: str) -> float:
    """`30d`, `12h`, `45m`, `90s` or a number of days, in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "d")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (e.g. 30d, 12h, 45m)") from None


def remove(entry: Entry) -> bool:
    """Delete an entry; False when a running job holds it (its lock), which is then left alone."""
    lock = entry.lock
    if lock is None:
        if entry.path.is_dir():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink(missing_ok=True)
        return True
    fd = open_lock_file(lock)
    try:
        if not try_lock(fd):
            return False
        # renamed first, so that the folder never looks like a complete entry while it is deleted
        doomed = entry.path.parent / f".{entry.path.name}{TMP_MARK}clear-{os.getpid()}"
        os.replace(entry.path, doomed)
        shutil.rmtree(doomed)
        unlock(fd)
        return True
    finally:
        os.close(fd)


def table(found: list[Entry], now: float) -> Table:
    out = compact_table("ltsearch caches", ["kind", "entry", "size", "age", "what"], right=("size", "age"),
                        wrap=("what",))
    for e in found:
        name = e.name if e.kind == DATA_KIND else e.name[:12]  # an artifact key: its first 12 hex digits
        out.add_row(e.kind, name, human_size(e.size), human_age(now - e.modified), e.what)
    return out


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ltsearch cache", description="List or clear ltsearch's caches.")
    parser.add_argument("action", choices=("ls", "clear"))
    parser.add_argument("--dir", default="", help="the artifact cache (runtime.cache_dir; default "
                                                  "$LTSEARCH_CACHE/artifacts, else ~/.cache/ltsearch/artifacts)")
    parser.add_argument("--kind", action="append", help="only entries of this kind (pretrain, imp_level, data); "
                                                        "repeatable")
    parser.add_argument("--older-than", type=parse_age, metavar="AGE",
                        help="only entries older than AGE (30d, 12h, 45m)")
    parser.add_argument("--dry-run", action="store_true", help="clear: list what would be removed, remove nothing")
    args = parser.parse_args(argv)
    artifacts = artifact_cache_dir(args.dir)
    now = time.time()
    found = [e for e in entries(artifacts) if (not args.kind or e.kind in args.kind)
             and (args.older_than is None or now - e.modified > args.older_than)]
    where = f"{artifacts} and {cache_root()}" if artifacts.parent != cache_root() else str(cache_root())
    if args.action == "ls":
        if found:
            write(table(found, now))
        write(f"{_entries(len(found))}, {human_size(sum(e.size for e in found))} in {where}", soft_wrap=True)
        return 0
    removed = [e for e in found if args.dry_run or remove(e)]
    kept = len(found) - len(removed)
    verb = "would remove" if args.dry_run else "removed"
    write(f"{verb} {_entries(len(removed))}, {human_size(sum(e.size for e in removed))} from {where}"
          + (f"; {kept} in use by a running job, left alone" if kept else ""), soft_wrap=True)
    return 0
