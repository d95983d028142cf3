"""An IMP run killed (SIGKILL) in the middle of a level resumes inside that level and ends with the mask of an
uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import torch

from ltsearch.pipeline import run_pipeline
from tests.conftest import REPO, TINY, make_config, run_cli

# Density 0.64 = 0.8^2: levels 0 and 1 train (8 epochs each, a checkpoint after every epoch: a window of
# several epochs to kill level 1 in), level 2 is the final mask. One thread in both runs, so that the
# interrupted run and the in-process reference compute bit for bit the same.
EPOCHS = 8
OVERRIDES = [*TINY, "dataset.train_size=1024", f"train.epochs={EPOCHS}", "pruner=imp", "sparsity=0.36",
             "stages=[search]", "runtime.threads=1"]


def test_imp_killed_inside_a_level_resumes_in_that_level_with_the_same_mask(tmp_path):
    run_dir = tmp_path / "killed"
    level0, level1 = run_dir / "search" / "level_00", run_dir / "search" / "level_01"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ltsearch", "run", *OVERRIDES, f"hydra.run.dir={run_dir}"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (level1 / "checkpoints" / "index.json").exists():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached level 1"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (level1 / "DONE.json").exists(), "level 1 finished before the kill; the test needs a larger window"
    assert (level0 / "DONE.json").exists()
    level0_marker = (level0 / "DONE.json").read_bytes()
    checkpoints = json.loads((level1 / "checkpoints" / "index.json").read_text())["checkpoints"]
    last_epoch = checkpoints[-1]["epoch"]
    assert 1 <= last_epoch < EPOCHS

    resumed = run_cli("resume", str(run_dir), cwd=REPO)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert re.search(rf"level_01: resuming at epoch {last_epoch}/{EPOCHS}", output), output[-3000:]
    assert "level_00 epoch" not in output  # level 0 was not trained again
    assert (level0 / "DONE.json").read_bytes() == level0_marker  # level 0 was not trained again
    epochs = [r["epoch"] for r in json.loads((level1 / "metrics.json").read_text())]
    assert epochs == list(range(1, EPOCHS + 1))

    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    try:
        run_pipeline(make_config(*OVERRIDES), reference)
    finally:
        torch.set_num_threads(threads)
    mask = torch.load(run_dir / "search" / "mask.pt", weights_only=True)
    expected = torch.load(reference / "search" / "mask.pt", weights_only=True)
    assert set(mask) == set(expected) and all(torch.equal(mask[n], expected[n]) for n in mask)
    levels = json.loads((run_dir / "search" / "levels.json").read_text())
    assert [r["level"] for r in levels] == [0, 1, 2]
    assert levels == json.loads((reference / "search" / "levels.json").read_text())
