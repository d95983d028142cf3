"""Experiment loggers, each read back from what it wrote offline: RUN_DIR/metrics.csv (always), TensorBoard
event files, a W&B offline run file and a local MLflow store (the last two when their extras are installed).
Every one carries each loop's per-epoch numbers, the CTS search's objective / expected density / lambda,
the stage times, the final results and the config."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from ltsearch.errors import ConfigError
from ltsearch.loggers import check_logger_extras
from ltsearch.loggers.csvfile import CSVLogger, read_rows
from ltsearch.pipeline import run_pipeline
from tests.conftest import TINY, make_config

# CTS after one epoch of dense training: pretraining, the search and retraining all log epochs
RUN = [*TINY, "runtime.threads=1", "runtime.cache=false", "pruner=cts_kl", "pruner.epochs=2", "sparsity=0.9",
       "stages=[search,rewind,retrain,evaluate]"]
CTS_KEYS = ("objective", "expected_density", "lambda")


def run(tmp_path: Path, *loggers: str) -> tuple[Path, dict]:
    run_dir = tmp_path / "run"
    overrides = [f"logger=[{','.join(loggers)}]"] if loggers else []
    results = run_pipeline(make_config(*RUN, *overrides), run_dir, label="cts_kl")
    return run_dir, results


def epochs_of(run_dir: Path, folder: str, key: str) -> list[tuple[int, float]]:
    """(epoch, value) of one metric from the loop's own metrics.json: what every logger must carry."""
    return [(r["epoch"], r[key]) for r in json.loads((run_dir / folder / "metrics.json").read_text())]


def same(got: list[tuple[int, float]], expected: list[tuple[int, float]], rel: float = 1e-6) -> bool:
    """The same epochs with the same values (up to float32 rounding of loggers that store float32)."""
    return [e for e, _ in got] == [e for e, _ in expected] and \
        [v for _, v in got] == pytest.approx([v for _, v in expected], rel=rel)


def test_metrics_csv_is_always_written(tmp_path):
    run_dir, results = run(tmp_path)
    table = pd.read_csv(run_dir / "metrics.csv")
    assert list(table.columns) == ["loop", "epoch", "metric", "value"]
    assert not table.duplicated(["loop", "epoch", "metric"]).any()

    def series(loop: str, metric: str) -> list[tuple[int, float]]:
        rows = table[(table["loop"] == loop) & (table["metric"] == metric)]
        return list(zip(rows["epoch"].astype(int), rows["value"], strict=True))

    assert series("retrain", "test_acc") == epochs_of(run_dir, "retrain", "test_acc")
    assert series("search/pretrain", "train_loss") == epochs_of(run_dir, "search/pretrain", "train_loss")
    for key in CTS_KEYS:
        assert series("search/cts", key) == epochs_of(run_dir, "search/cts", key)
    assert series("results", "test_acc") == [(0, results["test_acc"])]
    assert series("results", "density/measured") == [(0, results["density"]["measured"])]
    assert {loop for loop in table["loop"] if loop.startswith("stages/")} == \
        {f"stages/{s}" for s in ("search", "rewind", "retrain", "evaluate")}


def test_csv_keeps_the_last_row_of_an_epoch_a_resumed_run_repeated(tmp_path):
    logger = CSVLogger()
    logger.open(tmp_path, {}, "x")
    logger.write("retrain", 1, {"test_acc": 0.1})
    logger.write("retrain", 2, {"test_acc": 0.2})
    logger.close(None)
    with open(tmp_path / "metrics.csv", "a") as handle:
        handle.write("retrain,3,test_ac")  # a line cut short by a kill
    resumed = CSVLogger()
    resumed.open(tmp_path, {}, "x")
    resumed.write("retrain", 2, {"test_acc": 0.25})  # the resumed session repeats epoch 2
    resumed.close(None)
    assert read_rows(tmp_path / "metrics.csv") == [("retrain", "1", "test_acc", "0.1"),
                                                   ("retrain", "2", "test_acc", "0.25")]


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, results = run(tmp_path, "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()

    def scalars(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert same(scalars("retrain/test_acc"), epochs_of(run_dir, "retrain", "test_acc"))
    for key in CTS_KEYS:  # TensorBoard stores float32
        assert same(scalars(f"search/cts/{key}"), epochs_of(run_dir, "search/cts", key))
    assert same(scalars("results/test_acc"), [(0, results["test_acc"])])
    assert "stages/retrain/wall_time" in events.Tags()["scalars"]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"sparsity": 0.9' in text and "cts_kl" in text


def wandb_records(path: Path):
    """The protobuf records of a W&B offline run file (LevelDB log format: 32 KiB blocks of chunks, each with
    a 7-byte header; the file starts with a 7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, block = 7, b"", 32 * 1024
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def test_wandb_offline_run_reads_back(tmp_path):
    pytest.importorskip("wandb")
    run_dir, results = run(tmp_path, "wandb")
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path)):  # W&B's service writes
        assert time.monotonic() < deadline, "the W&B run file never got its exit record"  # the file on its own
        time.sleep(0.2)
    history, summary, config = [], {}, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
        elif kind in ("config", "run"):  # the config comes with the run record, and any later updates
            node = record.config if kind == "config" else record.run.config
            config.update({item.key: json.loads(item.value_json) for item in node.update})
    retrain = [(h["retrain/epoch"], h["retrain/test_acc"]) for h in history if "retrain/test_acc" in h]
    assert same(retrain, epochs_of(run_dir, "retrain", "test_acc"))
    lam = [(h["search/cts/epoch"], h["search/cts/lambda"]) for h in history if "search/cts/lambda" in h]
    assert same(lam, epochs_of(run_dir, "search/cts", "lambda"))
    assert summary["results/test_acc"] == pytest.approx(results["test_acc"])
    assert config["sparsity"] == 0.9 and config["pruner"]["name"] == "cts"


def test_mlflow_local_store_reads_back_and_a_resume_continues_its_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir, results = run(tmp_path, "mlflow")
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ltsearch")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "retrain/test_acc")
    assert same([(m.step, m.value) for m in history], epochs_of(run_dir, "retrain", "test_acc"))
    for key in CTS_KEYS:
        assert same([(m.step, m.value) for m in client.get_metric_history(found.info.run_id, f"search/cts/{key}")],
                    epochs_of(run_dir, "search/cts", key))
    assert found.data.metrics["results/test_acc"] == pytest.approx(results["test_acc"])
    assert found.data.params["sparsity"] == "0.9" and found.data.params["pruner.name"] == "cts"
    run_pipeline(make_config(*RUN, "logger=[mlflow]"), run_dir, label="cts_kl")  # re-entered: same MLflow run
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_a_logger_without_its_package_is_refused_with_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logger=wandb needs the wandb package.*pip install 'ltsearch\[wandb\]'"):
        check_logger_extras(make_config("logger=wandb").logger)
    with pytest.raises(ConfigError, match=r"pip install 'ltsearch\[wandb\]'"):
        make_config(*TINY, "logger=[tensorboard,wandb]")  # refused while composing, before anything runs
