"""MLflow (`logger=mlflow`, the `mlflow` extra): one MLflow run per ltsearch run, through `MlflowClient`
(no process-wide active run). The store is the SQLite file RUN_DIR/mlflow.db (MLflow's recommended local
backend; its plain-folder store is deprecated) unless `logger.mlflow.tracking_uri` names one.

A resumed ltsearch run continues its MLflow run (found by the tag `ltsearch.run_dir`). The flattened
config goes in as parameters, every number as a metric (`retrain/test_acc` stepped by epoch), the
results at step 0.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ltsearch.config import MLflowConfig, flatten
from ltsearch.loggers.base import MetricLogger
from ltsearch.paths import MLFLOW_ARTIFACTS, MLFLOW_DB
from ltsearch.runtime import quiet_loggers

RUN_DIR_TAG = "ltsearch.run_dir"
MAX_PARAM = 500  # MLflow's limit on a parameter value's length
BATCH = 100  # parameters per log_batch call (MLflow's limit)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Only warnings from these libraries' loggers for the block (they print their own INFO lines), and none
    of the deprecation warnings their dependencies raise while a store is opened."""
    with quiet_loggers(*names), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class MLflowLogger(MetricLogger):
    def __init__(self, cfg: MLflowConfig) -> None:
        self.cfg = cfg
        self.client: Any = None
        self.run_id = ""

    def tracking_uri(self, run_dir: Path) -> str:
        return self.cfg.tracking_uri or f"sqlite:///{(Path(run_dir) / MLFLOW_DB).resolve()}"

    def open(self, run_dir: Path, config: dict[str, Any], label: str) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        with _quiet("mlflow", "alembic"):  # creating a local store logs its table migrations
            self.client = MlflowClient(tracking_uri=self.tracking_uri(run_dir))
            experiment = self.client.get_experiment_by_name(self.cfg.experiment)
        artifacts = None if self.cfg.tracking_uri else (Path(run_dir) / MLFLOW_ARTIFACTS).resolve().as_uri()
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.cfg.experiment, artifact_location=artifacts))
        key = str(Path(run_dir).resolve())
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{key}'",
                                        max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(experiment_id, run_name=f"{label} {Path(run_dir).name}",
                                     tags={RUN_DIR_TAG: key, "ltsearch.method": label})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in flatten(config).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])

    def write(self, group: str, step: int, values: dict[str, float]) -> None:
        if self.client is None or not values:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{group}/{k}", v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), BATCH * 10):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH * 10])

    def close(self, error: BaseException | None) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status="FINISHED" if error is None else "FAILED")
            self.client = None
