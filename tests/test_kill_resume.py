"""SIGKILL a run at any moment, resume it, and get exactly the numbers of an uninterrupted run.

The short version of scripts/kill_resume.py (which makes 20+ kills): the reference runs in the background
while two runs are SIGKILLed in the middle of retraining and resumed, one with `ltsearch resume RUN_DIR`,
one with the same overrides and hydra.run.dir=RUN_DIR; then a few kills at random moments of every stage.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kill_resume", REPO / "scripts" / "kill_resume.py")
kr = importlib.util.module_from_spec(_spec)
sys.modules["kill_resume"] = kr
_spec.loader.exec_module(kr)

ARGS = ["--size", "tiny", "--run-seed", "0"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, started in the background; `.result()` waits for it."""
    overrides = kr.run_overrides(kr.parse_args(ARGS))
    folder = tmp_path_factory.mktemp("reference")
    run_dir = folder / "reference"
    proc = kr.launch(kr.ltsearch_cmd("run", *overrides, f"hydra.run.dir={run_dir}"), folder / "log.txt")

    class Reference:
        dir = run_dir

        @staticmethod
        def result() -> dict:
            assert proc.wait(timeout=TIMEOUT) == 0, (folder / "log.txt").read_text()[-3000:]
            return kr.comparable(run_dir)

    yield Reference
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _kill_mid_retrain(procs: dict[str, subprocess.Popen], runs: dict[str, Path]) -> None:
    """SIGKILL every process once its retraining has written its first epoch checkpoint."""
    pending = dict(procs)
    deadline = time.monotonic() + TIMEOUT
    while pending:
        assert time.monotonic() < deadline
        for how, proc in list(pending.items()):
            index = runs[how] / "retrain" / "checkpoints" / "index.json"
            if not index.exists():
                assert proc.poll() is None, f"{how}: the run ended before retraining"
                continue
            os.killpg(proc.pid, signal.SIGSTOP)  # freeze, look, then kill: what we see is the state at the kill
            try:
                assert not (runs[how] / "retrain" / "DONE.json").exists(), "retraining finished before the kill"
                assert len(kr.json.loads(index.read_text())["checkpoints"]) >= 1
            finally:
                assert kr.kill(proc)
            del pending[how]
        time.sleep(0.001)


def test_sigkill_in_the_middle_of_retraining_then_resume_both_ways(tmp_path, reference):
    overrides = kr.run_overrides(kr.parse_args(ARGS))
    runs = {how: tmp_path / how for how in ("resume", "run")}
    procs = {how: kr.launch(kr.ltsearch_cmd("run", *overrides, f"hydra.run.dir={d}"), tmp_path / f"{how}.log")
             for how, d in runs.items()}
    _kill_mid_retrain(procs, runs)
    for run_dir in runs.values():
        assert not (run_dir / "failed.json").exists()  # SIGKILL leaves no chance to write it
        problems, counts = kr.check_visible(run_dir)
        assert problems == [] and counts["pt"] >= 3, problems
    resumed = {
        "resume": kr.launch(kr.ltsearch_cmd("resume", str(runs["resume"])), tmp_path / "resume.log"),
        "run": kr.launch(kr.ltsearch_cmd("run", *overrides, f"hydra.run.dir={runs['run']}"), tmp_path / "run.log"),
    }
    expected = reference.result()
    for how, proc in resumed.items():
        assert proc.wait(timeout=TIMEOUT) == 0, (tmp_path / f"{how}.log").read_text()[-3000:]
        run_dir = runs[how]
        log = (run_dir / "run.log").read_text()
        assert "stage search: already complete, skipped" in log and "retrain: resuming at epoch" in log
        assert kr.differences(expected, kr.comparable(run_dir)) == []
        problems, counts = kr.check_visible(run_dir)
        assert problems == [] and counts.get("temporaries", 0) == 0


def test_random_kills_across_stages(tmp_path, reference, capsys):
    reference.result()
    start = time.monotonic()
    rc = kr.main([*ARGS, "--kills", "3", "--seed", "11", "--reference", str(reference.dir),
                  "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("visible files OK") == 3
    assert "results identical to the reference" in out
    assert time.monotonic() - start < TIMEOUT
