"""RUN_DIR/metrics.csv, written by every run: one row per number (`loop,epoch,metric,value`).

Long format, so every loop and stage fits one file with one header:
`pandas.read_csv(run_dir / "metrics.csv").pivot_table(index=["loop", "epoch"], columns="metric")` gives one
table per loop. Rows are appended as epochs finish (a killed run keeps what it logged); when the run ends
the file is rewritten with one row per (loop, epoch, metric), the latest, so an epoch that a resumed run
repeated appears once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ltsearch.loggers.base import MetricLogger
from ltsearch.paths import METRICS_CSV
from ltsearch.storage import atomic_write

HEADER = ("loop", "epoch", "metric", "value")


def read_rows(path: Path) -> list[tuple[str, str, str, str]]:
    """The well-formed rows of a metrics.csv (a line cut short by a kill is skipped)."""
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as handle:
        for row in csv.reader(handle):
            if len(row) == 4 and tuple(row) != HEADER:
                try:
                    float(row[3])
                except ValueError:
                    continue
                rows.append((row[0], row[1], row[2], row[3]))
    return rows


class CSVLogger(MetricLogger):
    def __init__(self) -> None:
        self.path: Path | None = None
        self.appended = False

    def open(self, run_dir: Path, config: dict[str, Any], label: str) -> None:
        self.path = Path(run_dir) / METRICS_CSV
        if not self.path.exists() or self.path.stat().st_size == 0:
            atomic_write(self.path, (",".join(HEADER) + "\n").encode())
            return
        with open(self.path, "rb+") as handle:  # a line cut short by a kill: start the next row on a new line
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")

    def write(self, group: str, step: int, values: dict[str, float]) -> None:
        if self.path is None or not values:
            return
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle)
            for name, value in values.items():
                writer.writerow((group, step, name, repr(value)))
        self.appended = True

    def close(self, error: BaseException | None) -> None:
        if self.path is None or not self.appended:
            self.path = None
            return
        latest = {(loop, epoch, metric): value for loop, epoch, metric, value in read_rows(self.path)}
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows((*key, value) for key, value in latest.items())
        atomic_write(self.path, buffer.getvalue().encode())
        self.path = None
