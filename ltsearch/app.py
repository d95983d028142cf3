"""The Hydra task: compose, validate, run the pipeline in Hydra's run (or sweep job) directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ltsearch.compose import register_configs, to_config
from ltsearch.pipeline import run_pipeline

register_configs()


def _label(cfg: DictConfig, choices: dict[str, Any]) -> str:
    """The method's name in reports: pruner.label, else the chosen pruner option (e.g. cts_kl)."""
    return str(OmegaConf.select(cfg, "pruner.label") or choices.get("pruner") or cfg.pruner.name)


@hydra.main(version_base="1.3", config_path="pkg://ltsearch.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    config = to_config(cfg)
    hc = HydraConfig.get()
    results = run_pipeline(config, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task),
                           label=_label(cfg, dict(hc.runtime.choices)))
    return results.get("test_acc")
