"""Crash safety: atomic writes, one writer per run directory, safe loading, corruption
detection with fallback, divergence stops a stage cleanly."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ltsearch.errors import ArtifactError, ResumeError, UnsafeArtifactError
from ltsearch.pipeline import run_pipeline
from ltsearch.rundir import RunLock
from ltsearch.storage import atomic_write, load_torch, remove_stale_temporaries, sha256_file
from tests.conftest import make_config, run_cli
from tests.test_bad_inputs import FAST, cli, message_of, snapshot


# -- atomic writes ---------------------------------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write(path, b'{"v": 1}')

    def interrupted(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b'{"v": 2, "partial')
    assert path.read_bytes() == b'{"v": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_stale_temporaries_are_removed_on_entry(tmp_path, tiny):
    (tmp_path / "search").mkdir(parents=True)
    stale = tmp_path / "search" / f".mask.pt.tmp-{999999}"
    stale.write_bytes(b"half a file")
    assert remove_stale_temporaries(tmp_path, own_folders=["search"]) == 1 and not stale.exists()
    run_dir = tmp_path / "run"
    run_pipeline(make_config(*tiny, "stages=[search]"), run_dir)
    stale = run_dir / "search" / f".mask.pt.tmp-{999999}"
    stale.write_bytes(b"half a file")
    record = run_dir / f".run.json.tmp-{999998}"
    record.write_bytes(b"half a record")
    run_pipeline(make_config(*tiny, "stages=[search]"), run_dir)
    assert not stale.exists() and not record.exists()


# -- one writer per run directory ------------------------------------------------------------------------------------
def test_run_lock_in_process(tmp_path):
    with RunLock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()
        with pytest.raises(ResumeError, match=f"is in use by pid {os.getpid()} on .*; one process per run"):
            RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == ""  # a clean release empties the lock file
    with RunLock(tmp_path):
        pass


def _lock_pid(run_dir: Path) -> int | None:
    try:
        text = (run_dir / ".lock").read_text()
    except OSError:
        return None
    return int(text.split()[1]) if text.startswith("pid ") else None


def test_concurrent_writer_refused_and_stale_lock_taken_over(tmp_path):
    """A second `ltsearch run` on a directory in use is refused with a clear message; once the first is
    SIGKILLed its lock is stale, and the next process takes it over and finishes the run."""
    run_dir = tmp_path / "run"
    args = ["run", *FAST, "dataset.train_size=1024", "runtime.threads=1", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    first = subprocess.Popen([sys.executable, "-m", "ltsearch", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _lock_pid(run_dir) != first.pid:
            assert first.poll() is None, "the first run ended before it was seen holding the lock"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)  # alive and holding the lock, whatever the machine's speed
        second = run_cli(*args)
        assert second.returncode == 1
        assert f"{run_dir} is in use by pid {first.pid} on " in second.stderr
        assert "one process per run directory" in second.stderr
        assert "Traceback" not in second.stdout + second.stderr
        assert not (run_dir / "failed.json").exists()
    finally:
        first.kill()
        first.wait()
    assert _lock_pid(run_dir) == first.pid  # left behind by the killed process
    third = run_cli(*args)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the stale lock of pid {first.pid} on " in (run_dir / "run.log").read_text()
    assert (run_dir / "evaluate" / "DONE.json").exists()
    assert (run_dir / ".lock").read_text() == ""


# -- safe loading ---------------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this object would run code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _malicious_bytes(marker: Path, kind: str) -> bytes:
    obj = {"state_dict": {"w": torch.zeros(2)}, "masks": {}, "payload": Payload(marker)}
    buffer = io.BytesIO()
    if kind == "torch_zip":
        torch.save(obj, buffer)
    elif kind == "torch_zip_protocol4":
        torch.save(obj, buffer, pickle_protocol=4)
    elif kind == "torch_legacy":
        torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    else:
        pickle.dump(obj, buffer, protocol=2)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the crafted file's own protocol
@pytest.mark.parametrize("kind", ["torch_zip", "torch_zip_protocol4", "torch_legacy", "plain_pickle"])
def test_malicious_file_is_refused_and_never_executed(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(_malicious_bytes(marker, kind))
    pickle.loads(pickle.dumps(Payload(tmp_path / "selftest")))  # the payload does work when unpickled
    assert (tmp_path / "selftest").exists()
    with pytest.raises(ArtifactError, match=r"evil\.pt (refused|is corrupt)"):
        load_torch(path)
    with pytest.raises(ArtifactError):
        load_torch(path, sha256=sha256_file(path))  # a matching checksum does not make it loadable
    assert not marker.exists()


def _finished_run(tmp_path: Path, *extra: str) -> Path:
    run_dir = tmp_path / "run"
    rc, _, err = cli("run", *FAST, *extra, f"hydra.run.dir={run_dir}")
    assert rc == 0, err
    return run_dir


def _replace_artifact(run_dir: Path, rel: str, data: bytes) -> None:
    """Plant a file and rewrite the checksum its manifest records (an attacker who edits both)."""
    path = run_dir / rel
    path.write_bytes(data)
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    marker = path.parent / "DONE.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        info["artifacts"][path.name] = digest
        marker.write_text(json.dumps(info))
    index = path.parent / "index.json"
    if index.exists():
        entries = json.loads(index.read_text())
        for entry in entries["checkpoints"]:
            if entry["file"] == path.name:
                entry["sha256"] = digest
        index.write_text(json.dumps(entries))


def _unfinish(run_dir: Path, *stages: str) -> None:
    import shutil

    for stage in stages:
        if stage == "retrain":  # as if killed after its last checkpoint: keep checkpoints and metrics
            for name in ("DONE.json", "final.pt"):
                (run_dir / stage / name).unlink()
        else:
            shutil.rmtree(run_dir / stage)


@pytest.mark.parametrize("target", ["search/mask.pt", "rewind/ticket.pt", "retrain/checkpoints/latest"])
def test_malicious_artifact_in_a_run_is_refused(tmp_path, target):
    """A planted mask, ticket or epoch checkpoint, with its recorded checksum rewritten to match, is refused
    with a clear message naming it (not skipped), and its code never runs."""
    run_dir = _finished_run(tmp_path)
    marker = tmp_path / "pwned"
    if target == "search/mask.pt":
        _unfinish(run_dir, "rewind", "retrain", "evaluate")
    elif target == "rewind/ticket.pt":
        _unfinish(run_dir, "retrain", "evaluate")
    else:
        _unfinish(run_dir, "retrain", "evaluate")
        index = json.loads((run_dir / "retrain" / "checkpoints" / "index.json").read_text())
        target = f"retrain/checkpoints/{index['checkpoints'][-1]['file']}"
    _replace_artifact(run_dir, target, _malicious_bytes(marker, "torch_zip"))
    rc, out, err = cli("resume", str(run_dir))
    assert rc == 1
    assert "Traceback" not in out + err
    assert f"{run_dir / target} refused: loading it needs arbitrary unpickling (it references exec)" \
        in message_of(err)
    assert not marker.exists()
    assert not (run_dir / "evaluate" / "DONE.json").exists()


# -- corruption: detected by name, resume falls back to the previous good checkpoint ---------------------------------
def _interrupt_retrain_at(monkeypatch, epoch: int) -> None:
    """Make the next retraining raise KeyboardInterrupt (as Ctrl-C would) when it starts `epoch` (1-based)."""
    from ltsearch.training.trainer import Trainer

    original = Trainer.train_epoch

    def train_epoch(self, e, *args, **kwargs):
        if self.stream == "retrain" and e + 1 == epoch:
            raise KeyboardInterrupt
        return original(self, e, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def _without_times(obj):
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items() if k not in ("time", "wall_time")}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def test_the_failure_is_recorded_though_sigterm_arrives_while_it_is_written(tmp_path):
    """A process of a distributed run dies: the survivor's collective fails, and the launcher's SIGTERM
    arrives as the survivor records that failure. The record is written all the same (SIGTERM is ignored
    once the run is stopping), and the process ends with its own error, not killed by the signal."""
    from tests import faults
    from tests.conftest import REPO

    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LTSEARCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(faults.command("peer_lost_in_retrain", ["run", *FAST, f"hydra.run.dir={run_dir}"]),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["stage"] == "retrain" and "Connection reset by peer" in failed["error"]


def test_a_session_killed_without_a_record_is_recorded_when_the_run_is_resumed(tmp_path, tiny):
    """Every process of a run killed at once (SIGKILL, out of memory, a lost node) leaves no failure record:
    the session that resumes the run writes it (the first stage not done, the killed holder of the lock),
    and replaces it when it ends."""
    from ltsearch.training.loop import Callback

    cfg = make_config(*tiny, "pruner=magnitude", "stages=[search]")
    run_pipeline(cfg, tmp_path)
    (tmp_path / ".lock").write_text("pid 4242 on elsewhere since Mon Jan  5 10:00:00 2026\n")  # as a kill leaves it
    seen = {}

    class Look(Callback):
        def on_run_start(self, run_dir, config, label):
            seen.update(json.loads((run_dir / "failed.json").read_text()))

    run_pipeline(make_config(*tiny, "pruner=magnitude", "stages=[search,rewind]"), tmp_path, callbacks=[Look()])
    assert seen["stage"] == "rewind"
    assert seen["error"].startswith("Killed: the session of pid 4242 on elsewhere since Mon Jan  5 10:00:00 2026 "
                                    "ended without releasing the run's lock or writing this record")
    assert not (tmp_path / "failed.json").exists()  # this session finished


def test_truncated_checkpoint_is_detected_and_skipped(tmp_path, tiny, monkeypatch, caplog):
    overrides = [*tiny, "pruner=magnitude", "pruner.when=rewind", "train.epochs=5", "train.schedule=cosine",
                 "stages=[search,rewind,retrain,evaluate]", "runtime.cache=false"]  # both runs compute all
    cfg = make_config(*overrides)
    reference = run_pipeline(cfg, tmp_path / "reference")
    ref_metrics = json.loads((tmp_path / "reference" / "retrain" / "metrics.json").read_text())

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_retrain_at(patch, 5)  # retraining runs epochs 2..5; stop when epoch 5 starts
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(cfg, run_dir)
    assert json.loads((run_dir / "failed.json").read_text())["stage"] == "retrain"
    checkpoints = run_dir / "retrain" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0004.pt"]
    newest = checkpoints / "epoch_0004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated

    caplog.set_level("INFO")
    results = run_pipeline(cfg, run_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{newest} is corrupt: its checksum does not match" in w and "falling back" in w for w in warnings)
    assert any("resuming at epoch 3/5" in r.getMessage() for r in caplog.records)
    assert _without_times(results) == _without_times(reference)
    assert _without_times(json.loads((run_dir / "retrain" / "metrics.json").read_text())) == \
        _without_times(ref_metrics)
    assert not (run_dir / "failed.json").exists()


def _state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}}


def test_checkpoints_fall_back_past_damaged_files_and_a_damaged_index(tmp_path, caplog):
    from ltsearch.training.checkpoints import Checkpoints

    ckpt = Checkpoints(tmp_path, keep=3)
    for epoch in (1, 2, 3, 4):
        ckpt.save(epoch, _state(epoch))
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0002.pt", "epoch_0003.pt",
                                                                   "epoch_0004.pt"]
    (tmp_path / "epoch_0004.pt").write_bytes(b"")  # truncated to nothing
    flipped = bytearray((tmp_path / "epoch_0003.pt").read_bytes())
    flipped[-100] ^= 0x01  # one bit
    (tmp_path / "epoch_0003.pt").write_bytes(bytes(flipped))
    caplog.set_level("WARNING")
    assert ckpt.latest()["epoch"] == 2
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"{tmp_path / 'epoch_0004.pt'} is corrupt" in warned and f"{tmp_path / 'epoch_0003.pt'} is corrupt" in warned
    # an orphan left by a kill between writing a checkpoint and updating the index is removed on the next save
    (tmp_path / "epoch_0009.pt").write_bytes(b"orphan")
    ckpt.save(3, _state(3))
    assert not (tmp_path / "epoch_0009.pt").exists()
    (tmp_path / "index.json").write_text('{"checkpoints": [')
    caplog.clear()
    assert ckpt.latest() is None
    assert "checkpoint index" in caplog.text and "is unreadable" in caplog.text


# -- divergence --------------------------------------------------------------------------------------------------------
def test_nan_loss_stops_the_stage_cleanly(tmp_path):
    """A huge learning rate makes the loss NaN/Inf during retraining: the stage stops with a message naming the
    stage, epoch and step, writes no completion marker, failed.json names it, earlier stages are untouched,
    and the run can be resumed (here with a runtime-only change; the same divergence recurs, at the same
    step, since the cause is in the config)."""
    run_dir = tmp_path / "run"
    rc, out, err = cli("run", *FAST, "sparsity=0.9", "train.lr=1e12", f"hydra.run.dir={run_dir}")
    assert rc == 1
    assert "Traceback" not in out + err
    message = message_of(err)
    assert "stage retrain: the training loss became NaN/Inf at epoch 1, step " in message
    assert "the stage stopped without completing" in message
    assert len(message.splitlines()) == 1
    assert not (run_dir / "retrain" / "DONE.json").exists()
    assert not (run_dir / "retrain" / "final.pt").exists()
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["stage"] == "retrain" and failed["error"].startswith("DivergenceError: stage retrain")
    for path in (run_dir / "retrain" / "checkpoints").glob("epoch_*.pt"):  # nothing diverged was saved
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    before = snapshot(run_dir / "search") | snapshot(run_dir / "rewind")

    rc, out, err = cli("resume", str(run_dir), "runtime.keep_checkpoints=3")
    assert rc == 1 and "Traceback" not in out + err
    assert message_of(err) == message  # same stage, epoch and step
    assert (snapshot(run_dir / "search") | snapshot(run_dir / "rewind")) == before
    assert not (run_dir / "retrain" / "DONE.json").exists()


def test_nan_in_dense_pretraining_names_the_part_of_the_search_stage(tmp_path):
    run_dir = tmp_path / "run"
    rc, _, err = cli("run", *FAST, "train.lr=1e12", "pruner.when=rewind", f"hydra.run.dir={run_dir}")
    assert rc == 1
    assert "stage search/pretrain: the training loss became NaN/Inf at epoch 1, step " in message_of(err)
    assert not list(run_dir.rglob("DONE.json"))
    assert json.loads((run_dir / "failed.json").read_text())["stage"] == "search"


def test_unsafe_error_is_an_artifact_error():
    assert issubclass(UnsafeArtifactError, ArtifactError)
