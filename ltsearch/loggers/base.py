"""What every metric logger shares: which numbers a record, a stage and the results carry, under which names.

Names are `<loop>/<metric>` for epochs (`retrain/test_acc`, `search/cts/expected_density`), stepped by the
epoch of the schedule; `stages/<stage>/wall_time` for finished stages; `results/<key>` for the final
results (`results/test_acc`, `results/density/measured`, `results/sanity/shuffle/margin`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ltsearch.errors import ConfigError, first_line
from ltsearch.training.loop import Callback, EpochLoop, Record

# results.json keys that are not one number per run (the config is logged as such; per-layer counts and
# per-epoch histories are in the run folder)
SKIPPED_RESULT_KEYS = ("config", "layers", "history", "stages", "flops_per_sample")


def scalars(record: Record) -> dict[str, float]:
    """The numbers of an epoch record, except the epoch itself."""
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)}


def flat_scalars(tree: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as `a/b/c` names (booleans as 0/1; lists and SKIPPED_RESULT_KEYS left
    out; None and NaN left out, since loggers cannot plot them)."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in SKIPPED_RESULT_KEYS:
                out.update(flat_scalars(value, f"{prefix}{key}/"))
    elif isinstance(tree, bool | int | float) and not (isinstance(tree, float) and math.isnan(tree)):
        out[prefix.rstrip("/")] = float(tree)
    return out


def epoch_of(loop: EpochLoop, record: Record) -> int:
    return int(record.get("epoch", len(loop.history)))


class MetricLogger(Callback):
    """Sends a run's numbers to one destination: subclasses implement `open`, `write` and `close`, and may
    override `write_config` and `write_results`."""

    def open(self, run_dir: Path, config: dict[str, Any], label: str) -> None:
        raise NotImplementedError

    def write(self, group: str, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, error: BaseException | None) -> None:
        raise NotImplementedError

    def write_results(self, values: dict[str, float]) -> None:
        self.write("results", 0, values)

    # -- the callback ----------------------------------------------------------------------------------------
    def on_run_start(self, run_dir: Path, config: dict[str, Any], label: str) -> None:
        try:
            self.open(run_dir, config, label)
        except Exception as exc:  # a logger that cannot start (its service, its store): one line, not a traceback
            raise ConfigError(f"{type(self).__name__} could not start: {type(exc).__name__}: {first_line(exc)}"
                              ) from exc

    def on_epoch_end(self, loop: EpochLoop, record: Record) -> None:
        self.write(loop.out.label, epoch_of(loop, record), scalars(record))

    def on_stage_end(self, stage: str, info: dict[str, Any]) -> None:
        self.write(f"stages/{stage}", 0, {"wall_time": float(info.get("wall_time", 0.0))})

    def on_results(self, results: dict[str, Any]) -> None:
        self.write_results(flat_scalars(results))

    def on_run_end(self, error: BaseException | None) -> None:
        self.close(error)
