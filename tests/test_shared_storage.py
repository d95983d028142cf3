"""Run folders and caches that others can write to, full and read-only disks, interruptions, odd paths,
and the identity of the data: what the bad-input table shows as one message each, checked in depth here
(nothing written outside its folder, nothing of the user's touched, and a later resume continuing to the
numbers of an uninterrupted run)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ltsearch.cache import ArtifactCache
from ltsearch.errors import UnsafePathError
from ltsearch.logfile import RunLogHandler
from ltsearch.paths import job_folder
from ltsearch.rundir import ArtifactDir, RunLock
from ltsearch.storage import atomic_write, remove_stale_temporaries
from tests import faults
from tests.conftest import REPO
from tests.test_bad_inputs import FAST, IMAGES, PRETRAIN, _image_folder, _png, cli, message_of, snapshot

SECRET = "the user's secret\n"


# -- the artifact cache ------------------------------------------------------------------------------------------
def _stage(folder: Path, value: int = 1) -> tuple[ArtifactDir, Callable[[], None], list[int]]:
    """A stage folder, a compute() that fills it, and the list of its calls."""
    out, calls = ArtifactDir(folder), []

    def compute() -> None:
        calls.append(1)
        out.start()
        out.save_json("x.json", {"v": value})
        out.save_tensors("w.pt", {"w": torch.arange(4.0)})
        out.mark_done()

    return out, compute, calls


def _reuse(cache: ArtifactCache, folder: Path, spec: dict | None = None) -> tuple[bool, ArtifactDir, list[int]]:
    out, compute, calls = _stage(folder)
    return cache.reuse_or_compute("k", spec or {"a": 1}, out, compute), out, calls


def _published(tmp_path: Path) -> tuple[ArtifactCache, Path]:
    cache = ArtifactCache(tmp_path / "cache")
    assert _reuse(cache, tmp_path / "first")[0] is False
    entry = next(p for p in (tmp_path / "cache" / "k").iterdir() if p.is_dir())
    return cache, entry


@pytest.mark.parametrize("damage", ["escape", "absolute", "link", "linked_folder", "checksum", "marker", "entry_link"])
def test_damaged_cache_entry_is_named_evicted_and_recomputed(tmp_path, caplog, damage):
    cache, entry = _published(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    marker = entry / "DONE.json"
    info = json.loads(marker.read_text())
    if damage in ("escape", "absolute"):
        name = "../../../escaped.json" if damage == "escape" else str(tmp_path / "escaped.json")
        info["artifacts"][name] = info["artifacts"]["x.json"]
    elif damage == "link":  # consistent record: the checksum is the secret's
        (entry / "x.json").unlink()
        (entry / "x.json").symlink_to(secret)
        info["artifacts"]["x.json"] = hashlib.sha256(SECRET.encode()).hexdigest()
    elif damage == "linked_folder":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "x.json").write_text(SECRET)
        (entry / "sub").symlink_to(tmp_path / "elsewhere")
        info["artifacts"]["sub/x.json"] = hashlib.sha256(SECRET.encode()).hexdigest()
    elif damage == "checksum":
        (entry / "w.pt").write_bytes((entry / "w.pt").read_bytes()[:-3])
    elif damage == "entry_link":
        shutil.move(entry, tmp_path / "moved_entry")
        entry.symlink_to(tmp_path / "moved_entry")
    if damage == "marker":
        marker.write_text("{not json")
    elif damage != "entry_link":
        marker.write_text(json.dumps(info))
    caplog.set_level("INFO")
    reused, out, calls = _reuse(cache, tmp_path / "second")
    assert reused is False and calls == [1] and out.done
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and f"artifact cache entry {entry} is unusable (" in warned[0], warned
    assert "evicted, computing second again" in warned[0]
    assert secret.read_text() == SECRET
    assert not list(tmp_path.rglob("escaped.json"))
    assert json.loads((out.path / "x.json").read_text()) == {"v": 1}
    assert not (entry.is_symlink()) and (entry / "DONE.json").is_file()  # the recomputed copy replaced it
    caplog.clear()
    reused, _, calls = _reuse(cache, tmp_path / "third")  # and every later run reuses that one
    assert reused is True and calls == []
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_restore_replaces_a_link_planted_in_the_run_folder(tmp_path):
    cache, _ = _published(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "x.json").symlink_to(secret)
    reused, out, _ = _reuse(cache, tmp_path / "second")
    assert reused and not (out.path / "x.json").is_symlink()
    assert secret.read_text() == SECRET


def test_cache_disk_full_keeps_the_run_and_leaves_no_temporary(tmp_path, caplog):
    cache = ArtifactCache(tmp_path / "cache" / "artifacts")  # the fault's cache is named so
    with faults.installed("disk_full_in_cache"):
        reused, out, calls = _reuse(cache, tmp_path / "run")
    assert reused is False and calls == [1] and out.done
    assert "could not store a copy in the artifact cache" in caplog.text and "No space left on device" in caplog.text
    assert sorted(p.name for p in (tmp_path / "cache" / "artifacts" / "k").iterdir()) == \
        [f"{cache_key(cache)}.lock"]  # no entry, no temporary folder: only the entry's lock


def cache_key(cache: ArtifactCache) -> str:
    from ltsearch.cache import spec_key

    return spec_key("k", {"a": 1})


def test_read_only_cache_is_reused_and_not_written(tmp_path, caplog):
    cache, entry = _published(tmp_path)
    root = tmp_path / "cache"
    ro = ArtifactCache(root / "artifacts")
    shutil.copytree(root, root / "artifacts", ignore=shutil.ignore_patterns("artifacts"))
    before = snapshot(root)
    with faults.installed("cache_read_only"):
        reused, _, calls = _reuse(ro, tmp_path / "second")
        assert reused and calls == []
        reused, _, calls = _reuse(ro, tmp_path / "third", {"a": 2})
        assert reused is False and calls == [1]
    assert snapshot(root) == before
    assert "it is used read-only" in caplog.text


def test_cache_lock_that_is_a_link_is_not_followed(tmp_path, caplog):
    cache, _ = _published(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    lock = tmp_path / "cache" / "k" / f"{cache_key(cache)}.lock"
    lock.unlink()
    lock.symlink_to(secret)
    reused, _, _ = _reuse(cache, tmp_path / "second")
    assert reused and secret.read_text() == SECRET
    assert "is a symbolic link" in caplog.text


# -- run folders: links, the user's files, temporaries ----------------------------------------------------------------
def test_lock_and_log_links_are_never_written_through(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(secret)
    with pytest.raises(UnsafePathError, match=r"\.lock is a symbolic link"):
        RunLock(tmp_path / "run").acquire()
    handler = RunLogHandler(str(tmp_path / "run" / "run.log"))  # what Hydra builds from job_logging
    (tmp_path / "run" / "log2").symlink_to(secret)
    linked = RunLogHandler(str(tmp_path / "run" / "log2"))
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO"})
    linked.emit(record)
    linked.close()
    handler.close()
    assert secret.read_text() == SECRET and linked.refused


def test_a_log_record_is_one_line(tmp_path):
    handler = RunLogHandler(str(tmp_path / "run.log"))
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    forged = "x\n[INFO] stage evaluate: done\rtab\tand\u2028separator"
    handler.emit(logging.makeLogRecord({"msg": "path %s", "args": (forged,), "levelname": "WARNING"}))
    handler.close()
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert lines == ["[WARNING] path x\\n[INFO] stage evaluate: done\\rtab\\tand\\u2028separator"]


def test_users_folder_is_left_exactly_as_it_was(tmp_path):
    users = tmp_path / "project"
    (users / "search").mkdir(parents=True)
    (users / "README.md").write_text("mine\n")
    (users / ".cache.tmp-12").write_text("mine too\n")
    (users / "search" / ".mask.pt.tmp-7").write_text("and this\n")
    before = {str(p.relative_to(users)) for p in users.rglob("*")}
    rc, _, err = cli("run", *FAST, f"hydra.run.dir={users}")
    assert rc == 2 and "is not an ltsearch run folder but already holds files" in err
    assert {str(p.relative_to(users)) for p in users.rglob("*")} == before  # not even Hydra's files


def test_only_ltsearch_temporaries_are_removed(tmp_path):
    run = tmp_path / "run"
    rc, _, err = cli("run", *FAST, "stages=[search]", f"hydra.run.dir={run}")
    assert rc == 0, err
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    ours = [run / f".run.json.tmp-{os.getpid()}", run / "search" / ".mask.pt.tmp-99"]
    theirs = [run / ".notes.tmp-3", run / "notes.tmp-3", run / "mine" / ".x.tmp-4", run / "search" / ".y.tmp-5x"]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (run / "search" / ".link.tmp-6").symlink_to(secret)
    assert remove_stale_temporaries(run, own_files=["run.json"], own_folders=["search"]) == 2
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    assert (run / "search" / ".link.tmp-6").is_symlink() and secret.read_text() == SECRET


def test_atomic_write_never_writes_through_a_planted_temporary(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (tmp_path / f".a.json.tmp-{os.getpid()}").symlink_to(secret)  # the name the next write will use
    atomic_write(tmp_path / "a.json", b"{}")
    assert secret.read_text() == SECRET and (tmp_path / "a.json").read_bytes() == b"{}"


# -- interruptions and full disks: one message, a failure record, and a resume to the same numbers ------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    rc, _, err = cli("run", *FAST, f"hydra.run.dir={run}")
    assert rc == 0, err
    return run


def _results(run: Path) -> dict:
    results = json.loads((run / "evaluate" / "results.json").read_text())
    return {k: results[k] for k in ("test_acc", "test_loss", "density")}


@pytest.mark.parametrize("fault,code,first_line", [
    ("ctrl_c_in_retrain", 130, "ltsearch: interrupted (Ctrl-C) in stage retrain; resume with: ltsearch resume "),
    ("sigterm_in_retrain", 143, "ltsearch: terminated (SIGTERM) in stage retrain; resume with: ltsearch resume "),
    ("disk_full_in_run", 1, "ltsearch: error: cannot write "),
])
def test_fault_then_resume_reproduces_the_uninterrupted_run(tmp_path, reference, fault, code, first_line):
    run = tmp_path / "run"
    with faults.installed(fault):
        rc, out, err = cli("run", *FAST, f"hydra.run.dir={run}")
    assert rc == code and "Traceback" not in out + err
    message = message_of(err)
    assert message.startswith(first_line) and len(message.splitlines()) == 1, message
    failed = json.loads((run / "failed.json").read_text())
    assert failed["stage"] == "retrain"
    assert not [p for p in run.rglob("*.tmp-*")], "a temporary was left behind"
    assert not (run / "retrain" / "DONE.json").exists() and (run / "search" / "DONE.json").exists()
    rc, _, err = cli("resume", str(run))
    assert rc == 0, err
    assert _results(run) == _results(reference)
    assert not (run / "failed.json").exists()


@pytest.mark.skipif(not faults.can_sandbox(), reason="no unprivileged mount namespace (unshare -Urm)")
def test_tiny_tmpfs_fills_up_then_the_run_resumes(tmp_path):
    """A real full disk: a 2 MB tmpfs takes the first artifacts of a run whose ticket needs more; the run
    stops with one line, leaves no temporary; once the filesystem is larger the resume finishes it."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    big = [*FAST, "model.hidden=[512,512]", "stages=[search,rewind]", "hydra.run.dir=" + str(mount / "run")]
    ltsearch = f"{sys.executable} -m ltsearch"
    script = f"""
mount -t tmpfs -o size=2m none {mount} || exit 97
{ltsearch} {' '.join(f"'{a}'" for a in ["run", *big])} > {tmp_path}/first.out 2> {tmp_path}/first.err
echo $? > {tmp_path}/first.rc
find {mount}/run -name '*.tmp-*' > {tmp_path}/temporaries
mount -o remount,size=64m {mount}
{ltsearch} resume {mount}/run > {tmp_path}/second.out 2> {tmp_path}/second.err
echo $? > {tmp_path}/second.rc
ls {mount}/run/rewind > {tmp_path}/rewind.ls
"""
    env = {**os.environ, "LTSEARCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=REPO, env=env, check=True, timeout=600)
    first = message_of((tmp_path / "first.err").read_text())
    assert (tmp_path / "first.rc").read_text().strip() == "1", first
    assert "the disk is full; stage " in first and len(first.splitlines()) == 1, first
    assert "Traceback" not in first and (tmp_path / "temporaries").read_text() == ""
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()[-2000:]
    assert "DONE.json" in (tmp_path / "rewind.ls").read_text()


@pytest.mark.skipif(not faults.can_sandbox(), reason="no unprivileged mount namespace (unshare -Urm)")
def test_tiny_tmpfs_cache_does_not_fail_a_finished_run(tmp_path):
    mount = tmp_path / "cache"
    mount.mkdir()
    args = ["run", *FAST, "model.hidden=[512,512]", *PRETRAIN, f"runtime.cache_dir={mount}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    script = (f"mount -t tmpfs -o size=256k none {mount} || exit 97; {sys.executable} -m ltsearch "
              + " ".join(f"'{a}'" for a in args) + f"; echo $? > {tmp_path}/rc; find {mount} > {tmp_path}/left")
    env = {**os.environ, "LTSEARCH_CACHE": str(tmp_path / "dcache"), "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert (tmp_path / "rc").read_text().strip() == "0", proc.stderr[-2000:]
    assert (tmp_path / "run" / "search" / "DONE.json").exists()
    assert "could not store a copy in the artifact cache" in (tmp_path / "run" / "run.log").read_text()
    assert not [line for line in (tmp_path / "left").read_text().splitlines() if ".tmp-" in line]


@pytest.mark.skipif(not faults.can_sandbox(), reason="no unprivileged mount namespace (unshare -Urm)")
def test_run_in_a_read_only_working_folder_says_so(tmp_path):
    """The default run folder is outputs/ under the working folder: a read-only one is named before Hydra
    starts (and --cfg job, which writes nothing, still works there)."""
    work = tmp_path / "work"
    work.mkdir()
    cmd, env = faults.sandboxed(["sh", "-c", f"cd {work} && {sys.executable} -m ltsearch run {' '.join(FAST)}; "
                                             f"echo rc=$?; {sys.executable} -m ltsearch run --cfg job"], [work])
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert "rc=2" in proc.stdout and "sparsity: 0.9" in proc.stdout
    assert "ltsearch: error: the output folder outputs is not writable (Read-only file system)" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(work.iterdir())


# -- resume: odd paths, deleted artifacts ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["back\\slash", "quote's \"double\"", "new\nline", "a=b,c [d] {e}", "-dash", "ü€"])
def test_resume_resumes_exactly_the_folder_named(tmp_path, reference, name):
    run = tmp_path / name
    shutil.copytree(reference, run)
    shutil.rmtree(run / "evaluate")
    rc, _, err = cli("resume", str(run))
    assert rc == 0, err
    assert (run / "evaluate" / "DONE.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no other folder was created
    log = (run / "run.log").read_text()
    assert all(line.startswith("[") for line in log.splitlines() if line.strip())  # no forged lines


def test_deleted_artifact_of_a_finished_stage_is_named_then_recomputed(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "rewind" / "ticket.pt").unlink()
    before = snapshot(run)
    rc, _, err = cli("resume", str(run))
    assert rc == 1 and f"{run / 'rewind' / 'ticket.pt'} is missing; stage rewind is marked complete" in err
    assert snapshot(run) == {**before, "failed.json": snapshot(run)["failed.json"]}  # nothing else written
    for stage in ("rewind", "retrain", "evaluate"):  # what the message says to do
        shutil.rmtree(run / stage)
    rc, _, err = cli("resume", str(run))
    assert rc == 0, err
    assert _results(run) == _results(reference)


# -- the data's identity ---------------------------------------------------------------------------------------------
def _pretrain_marker(run: Path) -> dict:
    return json.loads((run / "search" / "pretrain" / "DONE.json").read_text())


def test_cached_pretraining_keys_on_the_images_not_their_path(tmp_path):
    images = _image_folder(tmp_path / "images")
    common = [*IMAGES, "dataset=imagefolder", *PRETRAIN, f"runtime.cache_dir={tmp_path / 'cache'}"]

    def run(name: str, root: Path) -> dict:
        rc, _, err = cli("run", *common, f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'runs' / name}")
        assert rc == 0, err
        return _pretrain_marker(tmp_path / "runs" / name)

    assert "reused" not in run("first", images)
    shutil.copytree(images, tmp_path / "moved")
    assert "reused" in run("moved", tmp_path / "moved")  # the same images elsewhere: the same data
    stat = (images / "train" / "a" / "0.png").stat()
    _png(images / "train" / "a" / "0.png", value=250)  # other pixels, with the old modification time
    os.utime(images / "train" / "a" / "0.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "reused" not in run("changed", images)


def test_sweep_over_dataset_root_gives_each_value_its_own_folder(tmp_path):
    for name in ("a", "b"):
        _image_folder(tmp_path / "data" / name)
    sweep = tmp_path / "sweep"
    rc, _, err = cli("run", "-m", *IMAGES, "dataset=imagefolder", "stages=[search]",
                     f"dataset.root={tmp_path / 'data' / 'a'},{tmp_path / 'data' / 'b'}", f"hydra.sweep.dir={sweep}")
    assert rc == 0, err
    jobs = sorted(p for p in sweep.iterdir() if (p / "run.json").exists())
    assert len(jobs) == 2 and all(p.parent == sweep for p in jobs)
    roots = {json.loads((p / "data.json").read_text())["root"] for p in jobs}
    assert roots == {str(tmp_path / "data" / "a"), str(tmp_path / "data" / "b")}


def test_job_folder_names_stay_one_folder_inside_the_sweep():
    assert job_folder("pruner=snip,seed=0") == "pruner=snip,seed=0"
    assert job_folder("dataset.root=../..") == "dataset.root=..%2F.."
    assert "/" not in job_folder("dataset.root=/a/b,x=%2F") and job_folder("x=%2F") != job_folder("x=/")
    assert "\n" not in job_folder("pruner.label=a\nb")
    long = job_folder("dataset.root=" + "x" * 400)
    assert len(long.encode()) <= 200 and long != job_folder("dataset.root=" + "x" * 399)


# -- reports ------------------------------------------------------------------------------------------------------
def test_report_skips_a_malformed_run_and_reports_the_rest(tmp_path, reference, capsys):
    from ltsearch.report import build_report

    for name in ("good", "bad_record", "bad_results"):
        shutil.copytree(reference, tmp_path / name)
    (tmp_path / "bad_record" / "run.json").write_text('["not", "a", "record"]')
    (tmp_path / "bad_results" / "evaluate" / "results.json").write_text('{"test_acc": 0.5')
    report = build_report([tmp_path])
    assert list(report.runs["run"]) == [str(tmp_path / "good")]
    assert list(report.runs["status"]) == ["done"]
