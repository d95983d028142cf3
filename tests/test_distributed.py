"""Runs over several processes: torchrun with the gloo backend, two processes on the CPU, a tiny MLP on fake data.

A 2-process run computes what a 1-process run with the same global batch computes (mask, scores and
accuracies to float tolerance, CTS with pruner.ddp_lambda=global), only rank 0 writes the run folder,
SIGKILL of one rank in the middle of retraining leaves a failure record (written by rank 0, which survives)
and a resume reproduces the uninterrupted 2-process run exactly, GradBalance's lambda* over ranks matches a
hand computation in both modes, and a failing rank stops the job with one message. Select them with
`-m distributed`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ltsearch.data.augment import augment_batch
from ltsearch.distributed import Shard
from ltsearch.locks import open_lock_file, try_lock
from tests.conftest import REPO
from tests.test_kill_resume import kr

pytestmark = pytest.mark.distributed

TIMEOUT = 120
RUN = ["dataset=fake", "dataset.train_size=500", "dataset.test_size=130", "model=mlp1d", "model.hidden=[32,32]",
       "train=tiny", "train.epochs=8", "train.batch_size=64", "runtime.progress=false", "runtime.threads=1",
       "runtime.cache=false", "pruner=cts_kl", "pruner.ddp_lambda=global", "sanity.variants=[shuffle]",
       "search_protocol=none", "sparsity=0.9"]


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ltsearch", *args]


def files_of(run_dir: Path) -> set[str]:
    """Every file of a run folder, Hydra's timestamped copies of the config left out."""
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts}


def tensors(path: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(path, weights_only=True)
    return saved.get("state_dict", saved)


# -- the split of a global batch ------------------------------------------------------------------------------
def test_shards_partition_every_global_batch_and_weight_it_to_its_mean():
    for world in (1, 2, 3, 4):
        for n in (1, 2, 5, 8, 13):
            shards = [Shard(r, world) for r in range(world)]
            rows = sorted(int(i) for s in shards if s.size(n) for i in s.take(torch.arange(n)))
            assert rows == list(range(n))
            # the mean over ranks of weight_r x (rank r's mean) is the batch mean
            values = torch.randn(n, dtype=torch.float64)
            parts = [s.weight(n) * (s.take(values).mean() if s.size(n) else 0.0) for s in shards]
            assert math.isclose(sum(parts) / world, float(values.mean()), rel_tol=1e-12)


def test_a_rank_with_no_row_of_a_short_batch_gets_a_placeholder_of_weight_zero():
    shard = Shard(2, 3)
    assert shard.size(2) == 0 and shard.weight(2) == 0.0
    assert shard.take(torch.tensor([7, 9])).tolist() == [7]


def test_augmentation_of_a_shard_is_its_rows_of_the_whole_batch():
    x = torch.randn(7, 3, 8, 8)
    whole = augment_batch(x, "crop_flip", torch.Generator().manual_seed(3))
    for r in range(2):
        shard = Shard(r, 2)
        part = augment_batch(shard.take(x), "crop_flip", torch.Generator().manual_seed(3), shard, 7)
        assert torch.equal(part, shard.take(whole))


# -- GradBalance over ranks ----------------------------------------------------------------------------------
def test_gradbalance_lambda_over_ranks_matches_a_hand_computation(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from dist_lambda_worker import DENSITY, N, gradients

    out = tmp_path / "lambda.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "dist_lambda_worker.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world"] == 2
    p = torch.sigmoid(torch.full((N,), 0.5, dtype=torch.float64))
    g_sp = 100.0 / (1.1 * DENSITY * N) * p * (1 - p)
    for mode in ("authors", "global"):
        lam = 0.0
        for step in range(2):
            g = [gradients(r, step).double() for r in range(2)]
            g_mean = (g[0] + g[1]) / 2
            if mode == "authors":  # the mean of the ranks' own targets
                target = (float(g[0].norm()) + float(g[1].norm())) / 2 / float(g_sp.norm())
            else:  # the target of the mean gradient
                target = float(g_mean.norm()) / float(g_sp.norm())
            lam = target if step == 0 else 0.99 * lam + 0.01 * target
            record = got[mode][step]
            assert record["s_err"] > 0
            assert math.isclose(record["lam"], lam, rel_tol=1e-5)
            assert torch.allclose(torch.tensor(record["grad"], dtype=torch.float64), g_mean + lam * g_sp,
                                  rtol=1e-5, atol=1e-6)
    # with two ranks whose gradients differ, the authors' average exceeds the global target
    assert got["authors"][0]["lam"] > got["global"][0]["lam"] * 1.01


# -- whole runs through the CLI -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run on one process and on two (started together: two cores)."""
    root = tmp_path_factory.mktemp("ddp")
    dirs = {"one": root / "one", "two": root / "two"}
    procs = {
        "one": kr.launch(kr.ltsearch_cmd("run", *RUN, f"hydra.run.dir={dirs['one']}"), root / "one.log"),
        "two": kr.launch(torchrun("run", *RUN, f"hydra.run.dir={dirs['two']}"), root / "two.log"),
    }
    for name, proc in procs.items():
        assert proc.wait(timeout=TIMEOUT) == 0, (root / f"{name}.log").read_text()[-3000:]
    return dirs


def test_two_processes_compute_what_one_computes(runs):
    one, two = runs["one"], runs["two"]
    assert torch.equal(torch.load(one / "search/mask.pt")["hidden.0.weight"],
                       torch.load(two / "search/mask.pt")["hidden.0.weight"])
    for name in ("search/mask.pt", "search/scores.pt", "retrain/final.pt", "sanity/shuffle/mask.pt"):
        a, b = tensors(one / name), tensors(two / name)
        assert a.keys() == b.keys()
        for key in a:
            if a[key].dtype == torch.bool:
                assert torch.equal(a[key], b[key]), (name, key)
            else:
                assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-4), (name, key)
    r1, r2 = (json.loads((d / "evaluate/results.json").read_text()) for d in (one, two))
    assert math.isclose(r1["test_acc"], r2["test_acc"], abs_tol=1e-9)
    assert math.isclose(r1["test_loss"], r2["test_loss"], rel_tol=1e-4)
    assert r1["cost"]["total"]["epochs"] == pytest.approx(r2["cost"]["total"]["epochs"])
    for metrics in ("search/pretrain/metrics.json", "search/cts/metrics.json", "retrain/metrics.json"):
        e1, e2 = (json.loads((d / metrics).read_text()) for d in (one, two))
        assert [e["samples"] for e in e1] == [e["samples"] for e in e2]
        for a, b in zip(e1, e2, strict=True):
            for key in ("train_loss", "test_acc", "objective", "expected_density"):
                if key in a:
                    assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (metrics, key)


def test_only_rank_0_writes_the_run_folder(runs):
    one, two = runs["one"], runs["two"]
    assert files_of(two) == files_of(one)
    assert len(list((two / ".hydra").iterdir())) == 1  # one launch: one copy of the config, by rank 0
    log = (two / "run.log").read_text()
    for stage in ("search", "rewind", "retrain", "sanity", "evaluate"):
        assert log.count(f"stage {stage}: starting") == 1


def test_the_tasks_of_a_submitit_job_run_as_one_ddp_run(runs, tmp_path):
    """hydra/launcher=slurm with tasks_per_node=2, on this machine: submitit's local executor starts the job's
    two tasks as Slurm would (the pickled Hydra job in each, submitit's job environment); ltsearch joins them
    into one process group, and they compute what torchrun's two processes compute."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(kr.ltsearch_cmd("run", "-m", "hydra/launcher=submitit_local",
                                          "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5", *RUN,
                                          f"hydra.sweep.dir={sweep}"),
                          capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run_dir,) = [p.parent for p in sweep.glob("*/run.json")]
    assert len(list(sweep.glob(".submitit/*/*_1_log.out"))) == 1  # a second task ran
    assert files_of(run_dir) == files_of(runs["two"])
    assert kr.differences(kr.comparable(runs["two"]), kr.comparable(run_dir)) == []


def _workers(proc: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes."""
    found = {}
    for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        if "RANK" in env:
            found[int(env["RANK"])] = int(pid)
    return found


def test_sigkill_of_one_rank_mid_retrain_then_resume_reproduces_the_uninterrupted_run(runs, tmp_path):
    run_dir = tmp_path / "killed"
    proc = kr.launch(torchrun("run", *RUN, f"hydra.run.dir={run_dir}"), tmp_path / "killed.log")
    index = run_dir / "retrain" / "checkpoints" / "index.json"
    assert kr.wait_until(proc, index.exists, TIMEOUT), (tmp_path / "killed.log").read_text()[-3000:]
    workers = _workers(proc)
    everyone = [proc.pid, *workers.values()]
    for pid in everyone:  # freeze, look, then kill rank 1: what we see is the state at the kill
        os.kill(pid, signal.SIGSTOP)
    assert not (run_dir / "retrain" / "DONE.json").exists(), "retraining finished before the kill"
    os.kill(workers[1], signal.SIGKILL)
    for pid in everyone:
        os.kill(pid, signal.SIGCONT)
    start = time.monotonic()
    assert proc.wait(timeout=60) != 0  # torchrun stops rank 0 too: no hang
    assert time.monotonic() - start < 30
    failed = json.loads((run_dir / "failed.json").read_text())  # recorded by rank 0, which survived the kill
    assert failed["stage"] == "retrain", failed
    resumed = kr.launch(torchrun("resume", str(run_dir)), tmp_path / "resume.log")
    assert resumed.wait(timeout=TIMEOUT) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    log = (run_dir / "run.log").read_text()
    assert "retrain: resuming at epoch" in log
    assert kr.differences(kr.comparable(runs["two"]), kr.comparable(run_dir)) == []
    assert not (run_dir / "failed.json").exists()


def test_a_failing_rank_stops_the_job_with_one_message(tmp_path):
    """Rank 0 cannot take the run's lock; a global batch does not split over the processes; a config is
    invalid: every rank stops, the message is printed once (the jobs run side by side)."""
    locked = tmp_path / "locked"
    fd = open_lock_file(locked / ".lock")
    assert try_lock(fd)
    os.pwrite(fd, b"pid 1 on elsewhere\n", 0)
    jobs = {"is in use by pid 1 on elsewhere": [*RUN, f"hydra.run.dir={locked}"],
            "train.batch_size=63 is the global batch, split over 2 processes": [*RUN, "train.batch_size=63",
                                                                               f"hydra.run.dir={tmp_path / 'odd'}"],
            "sparsity must be in [0, 1)": [*RUN, "sparsity=2", f"hydra.run.dir={tmp_path / 'invalid'}"]}
    procs = {message: subprocess.Popen(torchrun("run", *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True) for message, args in jobs.items()}
    try:
        for message, proc in procs.items():
            text, _ = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode != 0
            assert text.count(message) == 1, text[-3000:]
            assert "Traceback (most recent call last):\n  File \"" + str(REPO) not in text
    finally:
        os.close(fd)
