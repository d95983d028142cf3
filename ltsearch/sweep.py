"""The sweep summary: tables and plots written into a multirun's sweep folder, whatever happened to its jobs.

Hydra calls `on_multirun_end` only when every job succeeded, and only in the launching process. A job's
`on_job_end`, however, runs after every job, failed or not, in whichever process ran the job (the launching
process for the basic launcher, the worker for joblib, the Slurm job for submitit). So `SweepSummary`
rebuilds the summary from disk at the end of every job, under a lock on the sweep folder and with atomic
writes: the last job to finish leaves the complete summary, for every launcher. It writes it once more in
`on_multirun_end` when that is called.

A job that failed before the pipeline could write its run record (an invalid config, a run directory that
holds another config) gets a `failed.json` from here, with its overrides and error, so the summary lists it.

Files in the sweep folder: summary.csv (method x sparsity), summary_runs.csv, summary_sanity.csv (when the
sanity stage ran), summary.txt (the printed tables, failed jobs with their errors), and the plots of
`ltsearch.plots` (PNG, PDF, SVG).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import ltsearch.distributed as distributed
import ltsearch.locks as locks
from ltsearch.paths import FAILURE, SUMMARY_CSV, SUMMARY_LOCK, SUMMARY_TXT
from ltsearch.plots import describe_written
from ltsearch.report import build_report, write_report
from ltsearch.storage import load_json, save_json
from ltsearch.tables import dataset_label, model_label

log = logging.getLogger(__name__)


def write_sweep_summary(sweep_dir: Path) -> list[Path]:
    """Rebuild the summary of every run below `sweep_dir` from disk (serialised by a lock on the folder)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    with locks.exclusive(sweep_dir / SUMMARY_LOCK):
        report = build_report([sweep_dir])
        if report.runs.empty:
            return []
        return write_report(report, csv=sweep_dir / SUMMARY_CSV, plots_dir=sweep_dir, text=sweep_dir / SUMMARY_TXT)


def _select(config: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(config, key, throw_on_resolution_failure=False)
    except Exception:  # an unresolvable or invalid value: the record is best effort
        return None
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def _label(config: DictConfig, section: str, name: Callable[[dict[str, Any]], str]) -> str | None:
    """`name` of a config section (model_label, dataset_label); its `name` key when it does not resolve."""
    try:
        node = OmegaConf.to_container(config[section], resolve=True)
    except Exception:  # an invalid section: fall back to whatever name it has
        return _select(config, f"{section}.name")
    return name(node) if isinstance(node, dict) else None


def record_failure(job_dir: Path, config: DictConfig, job_return: JobReturn, started: float) -> None:
    """Write failed.json for a failed job, unless the pipeline already recorded this failure."""
    existing = job_dir / FAILURE
    if existing.exists():
        try:
            if float(load_json(existing).get("time", 0)) >= started:
                return
        except Exception:
            pass
    error = getattr(job_return, "_return_value", None)
    text = f"{type(error).__name__}: {str(error).strip()}" if isinstance(error, BaseException) else str(error)
    job = {
        "method": _select(config, "pruner.label") or _select(config, "hydra.runtime.choices.pruner"),
        "model": _label(config, "model", model_label),
        "dataset": _label(config, "dataset", dataset_label),
        "sparsity": _select(config, "sparsity"),
        "seed": _select(config, "seed"),
        "when": _select(config, "pruner.when"),
    }
    try:
        job["sparsity"] = float(job["sparsity"])
    except (TypeError, ValueError):
        job["sparsity"] = None
    save_json(existing, {"stage": None, "error": text,
                         "time": time.time(), "overrides": list(job_return.overrides or []), "job": job})


class SweepSummary(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): the sweep summary after every job."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._started = time.time()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        # a job run by several processes (torchrun, a Slurm job of several tasks): rank 0 writes the summary
        if not self.enabled or config.hydra.mode != RunMode.MULTIRUN or not distributed.is_main():
            return
        try:
            if job_return.status == JobStatus.FAILED:
                record_failure(Path(config.hydra.runtime.output_dir), config, job_return, self._started)
            write_sweep_summary(Path(config.hydra.sweep.dir))
        except Exception as exc:  # a summary problem must never fail or hide the job's own result
            log.warning("could not write the sweep summary: %s: %s", type(exc).__name__, exc)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or not distributed.is_main():
            return
        try:
            written = write_sweep_summary(Path(config.hydra.sweep.dir))
            for line in describe_written(written):
                log.info("sweep summary: %s", line)
        except Exception as exc:
            log.warning("could not write the sweep summary: %s: %s", type(exc).__name__, exc)
