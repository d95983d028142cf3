#!/usr/bin/env python
"""Kill-and-resume torture test for ltsearch.

1. Runs a small experiment once, uninterrupted: the reference.
2. Runs it again in another run directory as `python -m ltsearch run ... hydra.run.dir=D`, SIGKILLs the
   process at a random (seeded) moment, checks that every file visible in D is complete, relaunches it
   (alternately `ltsearch resume D` and the same `ltsearch run ... hydra.run.dir=D`), kills it again, and so
   on until --kills kills have been made; a run that completes is compared with the reference and the next
   run directory is started. A run is killed at most --kills-per-run times, then allowed to finish.
3. Prints how many kills hit each stage and whether every completed run reproduced the reference exactly.

Kill moments mix three plans, so that kills land in every stage, including the short ones:
  startup  (15%) a random delay after launch, before the process has taken the run directory's lock;
  work     (20%) once the process holds the lock, a random delay within the reference's remaining time;
  stage    (65%) once the process logs that it starts the target stage, a random delay within 1.2x the
           reference's wall time of that stage. The target stages take turns, so that each gets its share;
           a run already past the target finishes without a kill, and a new run starts.

"Complete" after a kill means: every visible file (not an atomic-write temporary `.NAME.tmp-PID`) is whole:
every .json parses, every .pt loads with torch.load(weights_only=True), and every file that a completion
marker (DONE.json) or a checkpoint index names matches the SHA-256 recorded there. Hydra's own per-session
files (.hydra/, run.log) and the lock file are not ltsearch artifacts and are not checked.

"Exactly" means: results.json equal key by key except wall times, the per-epoch metrics of retraining (and
of dense pretraining) equal except their wall times, and every tensor artifact named in a completion marker
byte-identical (same SHA-256) to the reference's.

Usage:
  python scripts/kill_resume.py --kills 20                    # about 3-6 minutes on 2 CPU cores
  python scripts/kill_resume.py --kills 30 --pruner random --when init --seed 3 --run-seed 1
  python scripts/kill_resume.py --kills 5 --stages '[search,rewind,retrain,evaluate]' --keep --workdir /tmp/kr
Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ltsearch.ticketfile as ticketfile
from ltsearch.paths import (
    CHECKPOINTS,
    CLOCK,
    FAILURE,
    LOCK,
    LOG,
    MARKER,
    METRICS,
    METRICS_CSV,
    RECORD,
    TMP_MARK,
    results_file,
)

# A small experiment on synthetic data: dense pretraining to the rewind point (2 epochs), magnitude pruning,
# rewinding, retraining (4 epochs, cosine schedule, momentum: optimizer and scheduler state must resume
# exactly), sanity variants, evaluation. One thread, so that every session computes with the same kernels.
SMALL = [
    "dataset=fake",
    "dataset.train_size=4096",
    "dataset.test_size=512",
    "model=mlp1d",
    "model.hidden=[64,64]",
    "train=tiny",
    "train.epochs=6",
    "train.rewind_epoch=2",
    "train.schedule=cosine",
    "sparsity=0.9",
    "runtime.progress=false",
    "runtime.threads=1",
    "runtime.cache=false",  # resume is under test here, not reuse: both runs compute everything
]
# The same, smaller and without the sanity stage: the version in the test suite (a few seconds per run).
TINY = [
    "dataset=fake",
    "dataset.train_size=1024",
    "dataset.test_size=256",
    "model=mlp1d",
    "model.hidden=[32,32]",
    "train=tiny",
    "train.epochs=8",
    "train.rewind_epoch=2",
    "train.schedule=cosine",
    "sparsity=0.9",
    "runtime.progress=false",
    "runtime.threads=1",
    "runtime.cache=false",  # resume is under test here, not reuse: both runs compute everything
    "stages=[search,rewind,retrain,evaluate]",
]
# append-only logs, not artifacts: a kill may cut their last line (run.log; metrics.csv, whose reader skips it)
NOT_ARTIFACTS = {LOCK, LOG, METRICS_CSV}
TIME_KEYS = re.compile(r"^(time|wall_time|elapsed|finished|created|seconds|.*_time|.*_seconds)$")


# -- processes --------------------------------------------------------------------------------------------------
def ltsearch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ltsearch", *args]


def launch(cmd: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("HYDRA_FULL_ERROR", None)
    with open(log_path, "ab") as handle:
        handle.write(f"\n$ {' '.join(cmd)}\n".encode())
        handle.flush()
        return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def lock_holder(run_dir: Path) -> int | None:
    """The pid named in RUN_DIR/.lock (the lock is emptied on a clean release), or None."""
    try:
        text = (run_dir / LOCK).read_text()
    except OSError:
        return None
    match = re.match(r"pid (\d+)", text)
    return int(match.group(1)) if match else None


def holds_lock(proc: subprocess.Popen, run_dir: Path) -> bool:
    return lock_holder(run_dir) == proc.pid


def wait_until(proc: subprocess.Popen, condition, timeout: float, poll: float = 0.002) -> bool:
    """Poll `condition()` until it holds (True) or the process exits / time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def sleep_alive(proc: subprocess.Popen, seconds: float) -> bool:
    """Sleep up to `seconds`; False if the process exited meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
    return proc.poll() is None


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL the process (and its group); True if it was still running."""
    alive = proc.poll() is None
    if alive:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            alive = False
    proc.wait()
    return alive and proc.returncode == -signal.SIGKILL


# -- state of a run directory -------------------------------------------------------------------------------------
def position(run_dir: Path, stages: list[str]) -> str:
    """Where a run stands: the first selected stage without DONE.json, refined by its unfinished part
    (e.g. search/pretrain, sanity/shuffle), or 'finished'."""
    for stage in stages:
        folder = run_dir / stage
        if (folder / MARKER).exists():
            continue
        if folder.is_dir():
            parts = sorted(p.name for p in folder.iterdir()
                           if p.is_dir() and p.name != CHECKPOINTS and not (p / MARKER).exists()
                           and ((p / CLOCK).exists() or (p / CHECKPOINTS).exists()))
            if parts:
                return f"{stage}/{parts[0]}"
        return stage
    return "finished"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_visible(run_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Every visible file in `run_dir` complete? Returns (problems, counts)."""
    import torch

    problems: list[str] = []
    counts: Counter[str] = Counter()
    recorded: dict[Path, str] = {}
    done_dirs = {p.parent for p in run_dir.rglob(MARKER)}
    for marker in run_dir.rglob(MARKER):
        try:
            artifacts = json.loads(marker.read_text()).get("artifacts", {})
        except (OSError, ValueError) as exc:
            problems.append(f"{marker}: unreadable completion marker ({exc})")
            continue
        for name, digest in artifacts.items():
            recorded[marker.parent / name] = digest
            if not (marker.parent / name).exists():
                problems.append(f"{marker.parent / name}: named in {marker} but missing")
    for index in run_dir.rglob("checkpoints/index.json"):
        try:
            entries = json.loads(index.read_text())["checkpoints"]
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{index}: unreadable checkpoint index ({exc})")
            continue
        finished = index.parent.parent in done_dirs
        for entry in entries:
            path = index.parent / entry["file"]
            recorded[path] = entry["sha256"]
            if not path.exists() and not finished:  # a finished phase may drop its checkpoints
                problems.append(f"{path}: named in {index} but missing")
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if not path.is_file() or rel.parts[0] == ".hydra" or path.name in NOT_ARTIFACTS:
            continue
        if TMP_MARK in path.name:
            counts["temporaries"] += 1
            if not path.name.startswith("."):
                problems.append(f"{path}: a temporary that is not hidden")
            continue
        counts["files"] += 1
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
                counts["json"] += 1
            elif path.suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=True)
                counts["pt"] += 1
            elif path.suffix == ".safetensors":  # the evaluate stage's ticket file: its checksum is checked
                ticketfile.read(path)
                counts["ticket files"] += 1
            else:
                problems.append(f"{path}: unexpected file type")
                continue
        except Exception as exc:  # noqa: BLE001 - any failure to read is a partial/corrupt file
            problems.append(f"{path}: incomplete or unreadable ({type(exc).__name__}: {str(exc)[:100]})")
            continue
        if path in recorded:
            counts["checksummed"] += 1
            if sha256(path) != recorded[path]:
                problems.append(f"{path}: SHA-256 differs from the one recorded for it")
    return problems, dict(counts)


# -- comparison with the reference ----------------------------------------------------------------------------------
def strip_times(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_times(v) for k, v in obj.items() if not TIME_KEYS.match(str(k))}
    if isinstance(obj, list):
        return [strip_times(v) for v in obj]
    return obj


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                out.append(f"{path}{key}: only in {'reference' if key in a else 'killed run'}")
            else:
                out.extend(differences(a[key], b[key], f"{path}{key}."))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}{i}.")]
    return [] if a == b else [f"{path[:-1]}: {a!r} (reference) != {b!r} (killed run)"]


def comparable(run_dir: Path) -> dict[str, Any]:
    """What must equal the reference: results, per-epoch metrics, tensor artifacts' checksums."""
    out: dict[str, Any] = {"results": strip_times(json.loads(results_file(run_dir).read_text()))}
    for metrics in sorted(run_dir.rglob(METRICS)):
        out[str(metrics.relative_to(run_dir))] = strip_times(json.loads(metrics.read_text()))
    for marker in sorted(run_dir.rglob(MARKER)):
        artifacts = json.loads(marker.read_text()).get("artifacts", {})
        for name, digest in sorted(artifacts.items()):
            if name.endswith(".pt"):
                out[f"sha256 {(marker.parent / name).relative_to(run_dir)}"] = digest
    return out


# -- the experiment -------------------------------------------------------------------------------------------------
def run_overrides(args: argparse.Namespace) -> list[str]:
    overrides = [*(TINY if args.size == "tiny" else SMALL), f"pruner={args.pruner}", f"seed={args.run_seed}"]
    if args.when:
        overrides.append(f"pruner.when={args.when}")
    if args.stages:
        overrides.append(f"stages={args.stages}")
    return [*overrides, *args.override]


def selected_stages(run_dir: Path) -> list[str]:
    record = json.loads((run_dir / RECORD).read_text())
    return list(record["config"]["stages"])


def reference_run(overrides: list[str], ref_dir: Path, log: Path, timeout: float) -> dict[str, Any]:
    """The uninterrupted run; returns its timings (startup, per stage)."""
    t0 = time.monotonic()
    proc = launch(ltsearch_cmd("run", *overrides, f"hydra.run.dir={ref_dir}"), log)
    RUNNING[:] = [proc]
    wait_until(proc, lambda: holds_lock(proc, ref_dir), timeout)
    startup = time.monotonic() - t0
    rc = proc.wait(timeout=timeout)
    total = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"reference run failed (exit {rc}); see {log}")
    wall = json.loads(results_file(ref_dir).read_text())["wall_time"]
    stages = {k: float(v) for k, v in wall.items() if k != "total"}
    # time a session spends holding the lock outside the stages' own clocks (data loading, model building)
    overhead = max(0.1, total - startup - sum(stages.values()))
    return {"startup": startup, "total": total, "stages": stages, "overhead": overhead}


def stage_starts(run_dir: Path, stage: str) -> int:
    """How many sessions have logged the start of `stage` (run.log is appended to by every session)."""
    try:
        return (run_dir / LOG).read_text(errors="replace").count(f"stage {stage}: starting")
    except OSError:
        return 0


class Planner:
    """Chooses kill moments. Stage plans aim at the stages in turn (search, rewind, ..., search, ...), so
    every stage gets its share of kills however short it is; when the run is already past the stage whose
    turn it is, the session is not killed: the run finishes and the next run starts from scratch."""

    def __init__(self, rng: random.Random, timing: dict[str, Any], stages: list[str]) -> None:
        self.rng, self.timing, self.stages, self.turn = rng, timing, stages, 0

    def plan(self, run_dir: Path) -> tuple[str, Any] | None:
        rng, timing = self.rng, self.timing
        remaining = [s for s in self.stages if not (run_dir / s / MARKER).exists()]
        mode = rng.choices(["startup", "work", "stage"], weights=[0.15, 0.2, 0.65])[0]
        if mode == "startup":
            return "startup", rng.uniform(0.3, max(0.4, timing["startup"]))
        if mode == "stage":
            target = self.stages[self.turn % len(self.stages)]
            if target not in remaining:
                return None
            self.turn += 1
            delay = rng.uniform(0.0, 1.2 * max(0.02, timing["stages"].get(target, 0.1)))
            return f"stage:{target}", (target, stage_starts(run_dir, target), delay)
        work = timing["overhead"] + sum(timing["stages"].get(s, 0.1) for s in remaining)
        return "work", rng.uniform(0.0, work)


def execute_plan(proc: subprocess.Popen, plan: tuple[str, Any], run_dir: Path, stages: list[str],
                 timeout: float) -> bool:
    """Wait for the planned moment; True if the process is still running then (and so gets killed)."""
    mode, arg = plan
    if mode == "startup":
        return sleep_alive(proc, arg)
    if mode == "work":
        return wait_until(proc, lambda: holds_lock(proc, run_dir), timeout) and sleep_alive(proc, arg)
    target, before, delay = arg
    return (wait_until(proc, lambda: stage_starts(run_dir, target) > before, timeout, poll=0.001)
            and sleep_alive(proc, delay))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="total SIGKILLs to make (default 20)")
    parser.add_argument("--kills-per-run", type=int, default=6, help="then let the run finish (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--run-seed", type=int, default=0, help="seed of the experiment (default 0)")
    parser.add_argument("--pruner", default="magnitude", help="pruner option (default magnitude)")
    parser.add_argument("--when", default="rewind", help="pruner.when (default rewind: dense pretraining runs); "
                                                         "'' to keep the pruner's own")
    parser.add_argument("--stages", default="", help="e.g. '[search,rewind,retrain,evaluate]' (default: the "
                                                     "config's default stages)")
    parser.add_argument("--size", choices=["small", "tiny"], default="small",
                        help="small (default): 4096 samples, sanity stage included; tiny: the test suite's")
    parser.add_argument("--override", action="append", default=[], help="extra override (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--reference", type=Path, default=None,
                        help="an uninterrupted run of the same overrides to compare with (default: run one)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one session may take")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return torture(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in RUNNING:  # never leave a session running behind us
            if proc.poll() is None:
                kill(proc)


RUNNING: list[subprocess.Popen] = []


def torture(args: argparse.Namespace) -> int:

    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ltsearch-kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "sessions.log"
    overrides = run_overrides(args)
    print(f"kill_resume: {args.kills} kills, kill seed {args.seed}, work folder {work}")
    print(f"overrides: {' '.join(overrides)}")
    started = time.monotonic()

    ref_dir = args.reference or work / "reference"
    if args.reference is None:
        if ref_dir.exists():
            shutil.rmtree(ref_dir)
        timing = reference_run(overrides, ref_dir, log, args.timeout)
    else:
        wall = json.loads(results_file(ref_dir).read_text())["wall_time"]
        timing = {"startup": 3.0, "total": None, "overhead": 1.0,
                  "stages": {k: float(v) for k, v in wall.items() if k != "total"}}
    stages = selected_stages(ref_dir)
    reference = comparable(ref_dir)
    print(f"reference: {ref_dir} (startup {timing['startup']:.1f}s, overhead {timing['overhead']:.1f}s, stages "
          + ", ".join(f"{k} {v:.2f}s" for k, v in timing["stages"].items()) + ")")

    planner = Planner(rng, timing, stages)
    kills, failures = 0, []
    by_position: Counter[str] = Counter()
    by_mode: Counter[str] = Counter()
    resumed_with: Counter[str] = Counter()
    temporaries_seen = 0
    run_index = 0
    while kills < args.kills:
        run_index += 1
        run_dir = work / f"run_{run_index:02d}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        session, run_kills = 0, 0
        while True:
            session += 1
            if session == 1:
                how = "run"
                cmd = ltsearch_cmd("run", *overrides, f"hydra.run.dir={run_dir}")
            else:
                # `ltsearch resume` needs the run's record (run.json); a run killed before writing it is
                # started again with its original command, as a user would.
                how = "resume" if session % 2 == 0 and (run_dir / RECORD).exists() else "run"
                cmd = (ltsearch_cmd("resume", str(run_dir)) if how == "resume"
                       else ltsearch_cmd("run", *overrides, f"hydra.run.dir={run_dir}"))
                resumed_with[how] += 1
            planned = (kills < args.kills and run_kills < args.kills_per_run
                       and position(run_dir, stages) != "finished")
            plan = planner.plan(run_dir) if planned else None
            t0 = time.monotonic()
            proc = launch(cmd, log)
            RUNNING[:] = [proc]
            if plan is not None and execute_plan(proc, plan, run_dir, stages, args.timeout) and kill(proc):
                # The files do not change after the kill: read where the run stood from them.
                working = lock_holder(run_dir) == proc.pid
                where = position(run_dir, stages)
                kills += 1
                run_kills += 1
                label = (where if working else f"{where} (exiting)" if where == "finished"
                         else f"{where} (startup)")
                by_position[label] += 1
                by_mode[plan[0].split(":")[0]] += 1
                problems, counts = check_visible(run_dir)
                temporaries_seen += counts.get("temporaries", 0)
                status = "OK" if not problems else "PARTIAL FILES: " + "; ".join(problems[:3])
                print(f"kill {kills:2d}: run {run_index} session {session} ({how}) after "
                      f"{time.monotonic() - t0:5.2f}s, plan {plan[0]:<15} at {label:<24} "
                      f"visible files {status} ({counts.get('files', 0)} files, "
                      f"{counts.get('checksummed', 0)} checksummed, "
                      f"{counts.get('temporaries', 0)} temporaries)", flush=True)
                failures.extend(f"after kill {kills}: {p}" for p in problems)
                continue
            rc = proc.wait(timeout=args.timeout)
            if rc != 0:
                failures.append(f"run {run_index} session {session} ({how}) exited with {rc}; see {log}")
                print(f"run {run_index} session {session} ({how}) FAILED with exit status {rc}", flush=True)
                break
            problems, counts = check_visible(run_dir)
            if counts.get("temporaries"):
                problems.append(f"{counts['temporaries']} temporaries left after a completed session")
            if (run_dir / FAILURE).exists():
                problems.append("failed.json left after a completed session")
            diff = differences(reference, comparable(run_dir))
            failures.extend(f"run {run_index}: {p}" for p in problems)
            failures.extend(f"run {run_index} differs from the reference: {d}" for d in diff)
            verdict = "identical to the reference" if not diff else f"{len(diff)} DIFFERENCES: " + "; ".join(diff[:3])
            print(f"run {run_index} completed in session {session} after {run_kills} kills: results {verdict}; "
                  f"files {'OK' if not problems else problems[:3]}", flush=True)
            break

    print()
    print(f"kills: {kills} in {run_index} run(s), {time.monotonic() - started:.0f}s; resumed "
          f"{resumed_with['resume']}x with `ltsearch resume DIR`, {resumed_with['run']}x with "
          f"`ltsearch run ... hydra.run.dir=DIR`")
    print("kills by plan: " + ", ".join(f"{k} {v}" for k, v in sorted(by_mode.items())))
    print("kills by position (first unfinished stage at the moment of the kill; '(startup)': before the "
          "process took the lock; 'finished (exiting)': after the last stage, before the process ended):")
    for name, count in sorted(by_position.items(), key=lambda kv: (_order(kv[0], stages), kv[0])):
        print(f"  {name:<30} {count}")
    print(f"atomic-write temporaries seen right after kills: {temporaries_seen} (hidden, removed on resume)")
    if failures:
        print(f"FAILED: {len(failures)} problem(s)")
        for failure in failures[:30]:
            print(f"  {failure}")
    else:
        print("OK: no partial file was ever visible, and every completed run reproduced the reference exactly")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def _order(name: str, stages: list[str]) -> int:
    head = name.split("/")[0].split(" ")[0]
    return stages.index(head) if head in stages else len(stages)


if __name__ == "__main__":
    sys.exit(main())
