"""Small helpers shared by the benchmark scripts: run the CLI into a folder (or reuse a finished run),
and print/save tables."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The folder of real datasets: $LTSEARCH_DATA, else `shared/datasets` beside the repository."""
    env = os.environ.get("LTSEARCH_DATA")
    return Path(env).expanduser().resolve() if env else REPO.parent / "shared" / "datasets"


def ensure_run(run_dir: Path, overrides: list[str], results_file: str = "evaluate/results.json",
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m ltsearch run OVERRIDES hydra.run.dir=RUN_DIR` unless RUN_DIR already holds
    `results_file`; a killed run is resumed by the same call. Returns the parsed results file."""
    path = Path(run_dir) / results_file
    if not path.exists():
        print(f"  running {run_dir.name}: {' '.join(overrides)}", flush=True)
        cmd = [sys.executable, "-m", "ltsearch", "run", *overrides, f"hydra.run.dir={run_dir}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
        if proc.returncode != 0:
            raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(path.read_text())


def fmt_mean_std(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def save_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_parts(parts: dict[str, Callable[[], None]]) -> int:
    """Run every part of a benchmark, reporting a failed one and going on (the others are still worth their
    device time); exit status 1 when a part failed."""
    failed = []
    for name, part in parts.items():
        try:
            part()
        except Exception as exc:
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
    return 1 if failed else 0
