"""Multiruns through the CLI: the sweep summary (also with failed jobs), relaunch = resume, the joblib and
submitit launchers (with a pre-empted job requeued into its own folder), and the sweep presets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.slow
FAST = [*TINY, "stages=[search,rewind,retrain,sanity,evaluate]", "sanity.variants=[shuffle]"]


def _jobs(sweep: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sweep.glob("*/run.json")}


def _png(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_multirun_summary_with_a_failed_job_and_relaunch_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("run", "-m", *FAST, "pruner=magnitude,random", "sparsity=0.8,1.5", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]  # Hydra exits 1 when a job failed ...
    summary = (sweep / "summary.txt").read_text()  # ... and the summary is written all the same
    assert "4 run(s): 2 done, 2 failed" in summary and "sparsity must be in [0, 1)" in summary
    runs = {r["run"]: r for r in _csv_rows(sweep / "summary_runs.csv")}
    assert sorted(r["status"] for r in runs.values()) == ["done", "done", "failed", "failed"]
    assert len(_csv_rows(sweep / "summary_sanity.csv")) == 2
    assert _png(sweep / "accuracy_vs_sparsity.png") and _png(sweep / "layer_density_0.8.png")

    jobs = _jobs(sweep)
    assert len(jobs) == 2 and all("sparsity=0.8" in name for name in jobs)
    killed, finished = sorted(jobs.values(), key=lambda p: "random" in p.name)
    # a job killed during retraining: its retrain checkpoints stay, later stages never started
    for stage in ("evaluate", "sanity"):
        subprocess.run(["rm", "-rf", str(killed / stage)], check=True)
    (killed / "retrain" / "DONE.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file() and ".hydra" not in p.parts
              and p.name not in ("run.log", ".lock")}
    proc = run_cli("run", "-m", *FAST, "pruner=magnitude,random", "sparsity=0.8", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the finished job was skipped
    assert "resuming at epoch" in (killed / "run.log").read_text()
    assert (killed / "evaluate" / "results.json").exists()
    rows = _csv_rows(sweep / "summary.csv")
    assert {(r["method"], r["sparsity"], r["n_done"]) for r in rows} >= {("magnitude", "0.8", "1"),
                                                                         ("random", "0.8", "1")}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_joblib_launcher_runs_jobs_in_parallel_workers(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "runtime.threads=1",
                   "stages=[search,rewind,retrain,evaluate]", "pruner=magnitude", "sparsity=0.8,1.5",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    rows = _csv_rows(sweep / "summary_runs.csv")  # written by the workers, whichever finished last
    assert sorted(r["status"] for r in rows) == ["done", "failed"]
    assert _png(sweep / "accuracy_vs_sparsity.png")


def test_submitit_preempted_job_is_requeued_into_its_folder_and_resumes(tmp_path):
    """submitit_local runs the job in a submitit process; SIGUSR2 is submitit's pre-emption signal: the job
    is checkpointed and requeued with the same arguments, re-enters its folder and resumes retraining."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    args = [*TINY, "dataset.train_size=4096", "train.epochs=8", "stages=[search,rewind,retrain,evaluate]",
            "pruner=magnitude", "sparsity=0.8"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "ltsearch", "run", "-m", "hydra/launcher=submitit_local",
                             *args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        marker = None
        while time.time() < deadline and proc.poll() is None:
            found = list(sweep.glob("*/search/DONE.json"))
            if found:
                marker = found[0]
                break
            time.sleep(0.01)
        assert marker is not None, "the job never finished its search stage"
        job = marker.parents[1]
        holder = (job / ".lock").read_text().split()
        os.kill(int(holder[1]), signal.SIGUSR2)  # "pid N on HOST since ...": the process running the job
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    logs = "".join(p.read_text(errors="replace") for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    # the requeued job re-entered its own folder: the stage finished before the pre-emption was skipped
    assert "stage search: already complete, skipped" in (job / "run.log").read_text()
    assert _jobs(sweep) == {job.name: job}  # the same job folder, no second one
    assert not (job / "failed.json").exists()
    results = json.loads((job / "evaluate" / "results.json").read_text())
    metrics = json.loads((job / "retrain" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics] == list(range(1, 9))
    assert results["test_acc"] == metrics[-1]["test_acc"]
    assert _csv_rows(sweep / "summary.csv")[0]["n_done"] == "1"


def test_paper_grid_is_density_0_8_to_the_k():
    preset = yaml.safe_load((REPO / "conf" / "sweep" / "paper_grid.yaml").read_text())
    params = preset["hydra"]["sweeper"]["params"]
    parser = OverridesParser.create()
    sparsities = list(parser.parse_override(f"sparsity={params['sparsity']}").sweep_iterator())
    assert len(sparsities) == 16
    for k, s in zip(range(2, 33, 2), sparsities, strict=True):
        assert abs((1 - s) - 0.8 ** k) < 1e-12
        for n in (270_896, 291_376, 14_710_464):  # ResNet-20 (both variants), VGG-16: the exact kept count
            assert int((1 - s) * n + 1e-9) == int(0.8 ** k * n + 1e-9)
    assert list(parser.parse_override(f"seed={params['seed']}").sweep_iterator()) == [0, 1, 2]


def test_compare_methods_lists_existing_pruners():
    preset = yaml.safe_load((REPO / "conf" / "sweep" / "compare_methods.yaml").read_text())
    methods = str(preset["hydra"]["sweeper"]["params"]["pruner"]).split(",")
    available = {p.stem for p in (REPO / "conf" / "pruner").glob("*.yaml")}
    assert {"cts_kl", "ltr", "snip", "synflow"} <= set(methods)
    assert set(methods) <= available, f"missing pruner configs: {set(methods) - available}"


def test_launcher_presets_compose():
    from hydra import compose, initialize_config_module

    from ltsearch.compose import register_configs

    register_configs()
    with initialize_config_module(config_module="ltsearch.conf", version_base="1.3"):
        slurm = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        joblib = compose(config_name="config", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout > 0 and launcher.gpus_per_node == 1
    assert launcher.submitit_folder.endswith("/.submitit/%j")  # one folder per job id, below the sweep
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher")
    assert slurm.hydra.callbacks.sweep_summary._target_ == "ltsearch.sweep.SweepSummary"
    assert "sweep" in slurm.hydra.job.config.override_dirname.exclude_keys
