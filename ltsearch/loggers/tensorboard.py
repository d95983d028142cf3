"""TensorBoard event files in RUN_DIR/<logger.tensorboard.dir> (`logger=tensorboard`): every number as a
scalar (`retrain/test_acc` against the epoch, ...), the results at step 0 and the config as text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ltsearch.config import TensorBoardConfig
from ltsearch.loggers.base import MetricLogger


class TensorBoardLogger(MetricLogger):
    def __init__(self, cfg: TensorBoardConfig) -> None:
        self.cfg = cfg
        self.writer: Any = None

    def open(self, run_dir: Path, config: dict[str, Any], label: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / self.cfg.dir))
        text = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", f"method {label}\n\n```\n{text}\n```", 0)

    def write(self, group: str, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{group}/{name}", value, step)
        self.writer.flush()

    def close(self, error: BaseException | None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
