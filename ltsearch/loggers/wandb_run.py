"""Weights & Biases (`logger=wandb`, the `wandb` extra): one W&B run per ltsearch run, offline by default.

The W&B run id is derived from the run directory, so a resumed ltsearch run continues the same W&B run.
Each loop's metrics are plotted against its own epoch (`<loop>/epoch` as the step metric); the results go
into the run summary, the resolved config into the run config.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ltsearch.config import WandbConfig
from ltsearch.loggers.base import MetricLogger


def run_id(run_dir: Path) -> str:
    return "lts-" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class WandbLogger(MetricLogger):
    def __init__(self, cfg: WandbConfig) -> None:
        self.cfg = cfg
        self.run: Any = None
        self.groups: set[str] = set()

    def open(self, run_dir: Path, config: dict[str, Any], label: str) -> None:
        import wandb

        self.run = wandb.init(project=self.cfg.project, entity=self.cfg.entity or None, dir=str(run_dir),
                              mode=self.cfg.mode, name=f"{label} {Path(run_dir).name}", id=run_id(run_dir),
                              resume="allow", config=config, tags=list(self.cfg.tags) or None,
                              settings=wandb.Settings(silent=True, console="off"), reinit="finish_previous")

    def write(self, group: str, step: int, values: dict[str, float]) -> None:
        if self.run is None or not values:
            return
        if group not in self.groups:
            self.groups.add(group)
            self.run.define_metric(f"{group}/epoch")
            self.run.define_metric(f"{group}/*", step_metric=f"{group}/epoch")
        self.run.log({f"{group}/epoch": step, **{f"{group}/{k}": v for k, v in values.items()}})

    def write_results(self, values: dict[str, float]) -> None:
        if self.run is not None:
            self.run.summary.update({f"results/{k}": v for k, v in values.items()})

    def close(self, error: BaseException | None) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if error is None else 1)
            self.run = None
