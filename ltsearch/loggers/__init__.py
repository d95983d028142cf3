"""Experiment loggers: `Callback`s that copy a run's numbers to CSV, TensorBoard, Weights & Biases or MLflow.

Every run writes RUN_DIR/metrics.csv; the `logger` config group switches the others on. The pipeline
builds them with `build_loggers` and hands them to every loop through `RunContext.callbacks`, so each gets
every loop's per-epoch records (dense pretraining, the CTS search's objective / expected density / lambda,
IMP levels, retraining, sanity variants), each finished stage's wall time, the final results and the
resolved config. In a multi-process run only rank 0 logs.
"""

from __future__ import annotations

import importlib.util

import ltsearch.distributed as distributed
from ltsearch.config import LoggerConfig
from ltsearch.errors import ConfigError
from ltsearch.loggers.base import MetricLogger
from ltsearch.loggers.csvfile import CSVLogger
from ltsearch.training.loop import Callback

__all__ = ["EXTRAS", "MetricLogger", "build_loggers", "check_logger_extras"]

# logger -> (the module it needs, the ltsearch extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def _enabled(cfg: LoggerConfig) -> list[str]:
    return [name for name in EXTRAS if getattr(cfg, name).enabled]


def check_logger_extras(cfg: LoggerConfig) -> None:
    """Refuse, before anything runs, a logger whose package is not installed, naming the pip command."""
    for name in _enabled(cfg):
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"logger={name} needs the {module} package, which is not installed: "
                              f"pip install 'ltsearch[{extra}]'")


def build_loggers(cfg: LoggerConfig) -> list[Callback]:
    """The CSV logger and every enabled logger (none on ranks other than 0 of a multi-process run)."""
    if not distributed.is_main():
        return []
    check_logger_extras(cfg)
    loggers: list[Callback] = [CSVLogger()]
    for name in _enabled(cfg):
        if name == "tensorboard":
            from ltsearch.loggers.tensorboard import TensorBoardLogger

            loggers.append(TensorBoardLogger(cfg.tensorboard))
        elif name == "wandb":
            from ltsearch.loggers.wandb_run import WandbLogger

            loggers.append(WandbLogger(cfg.wandb))
        elif name == "mlflow":
            from ltsearch.loggers.mlflow_run import MLflowLogger

            loggers.append(MLflowLogger(cfg.mlflow))
    return loggers
