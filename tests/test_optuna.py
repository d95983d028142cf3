"""The Optuna example (`+sweep=optuna_cts`): Hydra's Optuna sweeper runs trials of the CTS knobs and
maximises `sweep_metric`, a number of results.json that does not come from the test set."""

from __future__ import annotations

import json

import pytest
import yaml

from ltsearch.app import sweep_value
from ltsearch.errors import ConfigError
from tests.conftest import TINY, make_config, run_cli


def test_the_preset_searches_the_cts_knobs_on_training_data_only():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = make_config("+sweep=optuna_cts", "pruner=cts_kl")
    assert cfg.sweep_metric == "pruning_point.pruning_point.train_subset_acc"
    assert "retrain" not in cfg.stages and "sanity" not in cfg.stages  # trials stop before retraining


@pytest.mark.slow
def test_an_optuna_sweep_runs_trials_and_reports_the_best_knobs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = run_cli("run", "-m", "-q", "+sweep=optuna_cts", "pruner=cts_kl", *TINY, "runtime.threads=1",
                   "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"pruner.lr", "pruner.temperature", "pruner.lambda_ema", "pruner.length"}
    values = []
    for results in tmp_path.glob("*/evaluate/results.json"):
        values.append(json.loads(results.read_text())["pruning_point"]["pruning_point"]["train_subset_acc"])
    assert len(values) == 2 and best["best_value"] == max(values)
    assert (tmp_path / "summary.csv").exists()  # the sweep summary, as for every sweep


def test_sweep_metric_names_a_number_of_the_results():
    results = {"test_acc": 0.9, "pruning_point": {"pruning_point": {"train_subset_acc": 0.5}}, "label": "x"}
    assert sweep_value(results, "test_acc") == 0.9
    assert sweep_value(results, "pruning_point.pruning_point.train_subset_acc") == 0.5
    assert sweep_value({}, "test_acc") is None  # no evaluate stage: nothing to optimise
    with pytest.raises(ConfigError, match="sweep_metric=label is not a number"):
        sweep_value(results, "label")
