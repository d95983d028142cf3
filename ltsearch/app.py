"""The Hydra task: compose, validate, run the pipeline in Hydra's run (or sweep job) directory.

In a run over several processes every process runs this task on the same run directory: a Slurm job of
several tasks (submitit) joins its process group here, torchrun's processes already did in `ltsearch.cli`.
Ranks other than 0 keep quiet (no console output, no log file): rank 0 speaks for the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ltsearch import distributed
from ltsearch.compose import register_configs, to_config
from ltsearch.pipeline import run_pipeline
from ltsearch.runtime import console

register_configs()


def _label(cfg: DictConfig, choices: dict[str, Any]) -> str:
    """The method's name in reports: pruner.label, else the chosen pruner option (e.g. cts_kl)."""
    return str(OmegaConf.select(cfg, "pruner.label") or choices.get("pruner") or cfg.pruner.name)


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
    distributed.setup()
    _quiet_unless_main()
    config = to_config(cfg)
    hc = HydraConfig.get()
    try:
        results = run_pipeline(config, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task),
                               label=_label(cfg, dict(hc.runtime.choices)))
    except distributed.PeerFailure:
        raise SystemExit(1) from None  # rank 0 failed and reports why
    return results.get("test_acc")
