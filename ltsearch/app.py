"""The Hydra task: compose, validate, run the pipeline in Hydra's run (or sweep job) directory.

In a run over several processes every process runs this task on the same run directory: a Slurm job of
several tasks (submitit) joins its process group here, torchrun's processes already did in `ltsearch.cli`.
Ranks other than 0 keep quiet (no console output, no log file): rank 0 speaks for the run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import ltsearch.distributed as distributed
from ltsearch.compose import method_label, register_configs, to_config
from ltsearch.config import flatten
from ltsearch.errors import ConfigError, LtsearchError, Refused, full_error_requested
from ltsearch.pipeline import run_pipeline
from ltsearch.runtime import configure_console, console

register_configs()


def sweep_value(results: dict[str, Any], key: str) -> float | None:
    """The number a Hydra sweeper optimises: `sweep_metric`, a dotted key of results.json."""
    if not results:
        return None
    values = flatten(results)
    if key not in values or not isinstance(values[key], int | float):
        numeric = sorted(k for k, v in values.items() if isinstance(v, int | float) and not k.startswith("config."))
        raise ConfigError(f"sweep_metric={key} is not a number in results.json; e.g. {', '.join(numeric[:12])}")
    value = float(values[key])
    return None if math.isnan(value) else value


def _quiet_unless_main() -> None:
    """On ranks other than 0: no rich console output and no log file (errors still reach stderr)."""
    if distributed.is_main():
        return
    console().quiet = True
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


@hydra.main(version_base="1.3", config_path="pkg://ltsearch.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """The task. A single run that is refused ends as `Refused`, which the command line prints alone: Hydra
    would frame the message with the job's overrides and a hint at HYDRA_FULL_ERROR. A job of a sweep raises
    the error itself, so that Hydra records that job as failed and goes on with the others."""
    try:
        return _run(cfg)
    except LtsearchError as exc:
        if HydraConfig.get().mode == RunMode.RUN and not full_error_requested():
            raise Refused(str(exc).strip()) from exc
        raise


def _run(cfg: DictConfig) -> float | None:
    distributed.setup()
    _quiet_unless_main()
    config = to_config(cfg)
    configure_console(config.runtime.verbosity)
    hc = HydraConfig.get()
    try:
        results = run_pipeline(config, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task),
                               label=method_label(cfg, dict(hc.runtime.choices)))
    except distributed.PeerFailure:
        raise SystemExit(1) from None  # rank 0 failed and reports why
    return sweep_value(results, config.sweep_metric)
