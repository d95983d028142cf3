"""The command line: help, config printing, sweeps and their relaunch, shell completion, resume, report, the
run directory layout, config-group preselection.

Whatever runs the pipeline goes through `python -m ltsearch` in a subprocess (as a user would run it, with
Hydra's logging and run directories); answers that run nothing (help, --cfg job, completion, refusals)
call `ltsearch.cli.main` in process, which is the same code without the interpreter start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra

from ltsearch import cli as ltsearch_cli
from tests.conftest import REPO, TINY, make_config, run_cli

GROUPS = {
    "model": {"cnn1d", "mlp1d", "lenet300100", "conv2", "conv4", "conv6", "resnet18", "resnet20", "resnet32",
              "resnet56", "vgg11", "vgg16", "vgg19"},
    "dataset": {"mnist1d", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "fake"},
    "train": {"tiny", "mnist1d", "lenet_mnist", "cifar_resnet20", "cifar_vgg16"},
    "pruner": {"dense", "magnitude", "random"},
    "objective": {"task", "forward_kl", "reverse_kl"},
    "experiment": {"quickstart", "lenet_mnist", "resnet20_cifar10", "vgg16_cifar10", "conv2_cifar10"},
}
STAGES = "stages=[search,rewind,retrain,evaluate]"  # without the (slower) sanity stage
THREADS = "runtime.threads=1"  # tiny nets: a second thread only waits


@pytest.fixture
def cli(monkeypatch, capsys):
    """`ltsearch ARGS` in process: returns (exit code, stdout, stderr)."""

    def call(*args: str, env: dict[str, str] | None = None, prog: str = "ltsearch") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", [prog, *args])
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        try:
            rc = ltsearch_cli.main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 0
        finally:
            GlobalHydra.instance().clear()
        out, err = capsys.readouterr()
        return rc, out, err

    return call


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def one_line_error(result: tuple[int, str, str]) -> str:
    rc, _, err = result
    assert rc == 2, result
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ltsearch: error: "), err
    return lines[0]


# -- help and config printing ------------------------------------------------------------------------------
def test_top_level_help_and_unknown_command(tmp_path, cli):
    script = Path(sys.executable).parent / "ltsearch"
    if not script.exists():
        script = Path(shutil.which("ltsearch") or "ltsearch")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and "usage: ltsearch <command>" in proc.stdout
    for command in ("run", "resume", "report"):
        assert f"\n  {command} " in proc.stdout
    rc, out, _ = cli("help")
    assert rc == 0 and out.strip() == proc.stdout.strip()
    assert "unknown command 'frobnicate'" in one_line_error(cli("frobnicate"))


def test_run_help_lists_groups_and_options_but_no_schemas(cli):
    rc, out, _ = cli("run", "--help")
    assert rc == 0
    groups_section = out.split("== Config groups ==")[1].split("== Flags ==")[0]
    listed = {}
    for line in groups_section.strip().splitlines():
        group, _, options = line.partition(":")
        listed[group.strip()] = {o.strip() for o in options.split(",")}
    assert set(GROUPS) <= set(listed)
    for group, options in GROUPS.items():
        assert options <= listed[group], (group, options - listed[group])
    assert "schema" not in out
    assert "ltsearch run pruner=" in out  # the examples footer


def test_cfg_job_prints_the_composed_config(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = cli("run", "--cfg", "job")
    cfg = yaml.safe_load(out)
    assert rc == 0 and cfg["model"]["name"] == "cnn1d" and cfg["dataset"]["name"] == "mnist1d"
    assert cfg["sparsity"] == 0.99 and cfg["stages"][0] == "search" and cfg["stages"][-1] == "evaluate"
    assert set(cfg) >= {"seed", "model", "dataset", "train", "pruner", "objective", "runtime"}
    rc, out, _ = cli("run", "--cfg", "job", "experiment=resnet20_cifar10", "sparsity=0.99", "model.shortcut=conv3x3")
    cfg = yaml.safe_load(out)
    assert cfg["model"] == {**cfg["model"], "name": "resnet_cifar", "depth": 20, "shortcut": "conv3x3"}
    assert cfg["train"]["epochs"] == 160 and cfg["sparsity"] == 0.99
    assert list(tmp_path.iterdir()) == []  # printing runs nothing and creates no folder


def test_numbers_for_config_groups_are_refused_in_one_line(cli):
    assert "model is a config group" in one_line_error(cli("run", "model=0.993"))


# -- refusals: one line, without Hydra's framing; crashes keep it ----------------------------------------------
def refusal(result: tuple[int, str, str]) -> str:
    """A refused run: exit status 1 (as Hydra gives it), and stderr is ltsearch's one sentence."""
    rc, _, err = result
    assert rc == 1, result
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ltsearch: error: "), err
    return lines[0]


def test_a_refusal_is_its_sentence_alone(tmp_path, cli):
    """Refused in the task (an invalid value; a second writer on a run folder) and by Hydra while composing
    (an unknown key, an option that does not exist, an override that does not parse): one line each."""
    from ltsearch.locks import open_lock_file, try_lock

    run = ["run", *TINY, THREADS, "pruner=magnitude", STAGES]
    assert "sparsity must be in [0, 1)" in refusal(cli(*run, "sparsity=1.0", f"hydra.run.dir={tmp_path / 'a'}"))
    held = tmp_path / "held"
    fd = open_lock_file(held / ".lock")
    try:
        assert try_lock(fd)
        assert "is in use by" in refusal(cli(*run, f"hydra.run.dir={held}"))
    finally:
        os.close(fd)
    assert refusal(cli(*run, "sparsty=0.5", "--cfg", "job")) == (
        "ltsearch: error: unknown config key sparsty (did you mean sparsity?): ltsearch has no such setting "
        "(`ltsearch run --cfg job` prints every key)")
    assert "pruner=nope: no such option; the options of pruner are cts, cts_kl," in refusal(
        cli(*run, "pruner=nope", "--cfg", "job"))
    assert "cannot parse the override 'sparsity=[0.5'" in refusal(cli(*run, "sparsity=[0.5", "--cfg", "job"))
    assert refusal(cli(*run, "model.depht=3", "--cfg", "job")).startswith(
        "ltsearch: error: unknown config key model.depht (did you mean model.depth?)")


def test_a_crash_keeps_hydras_framing_and_its_trace(tmp_path, cli, monkeypatch):
    """An error that is not a refusal is a bug: Hydra's report (the job's overrides, the trace, the
    HYDRA_FULL_ERROR hint) stays, since the trace helps."""
    import dataclasses

    from ltsearch.stages import STAGES as REGISTRY

    def broken(ctx, out):
        raise RuntimeError("a bug in a stage")

    monkeypatch.setitem(REGISTRY, "rewind", dataclasses.replace(REGISTRY["rewind"], run=broken))
    rc, _, err = cli("run", *TINY, THREADS, "pruner=magnitude", STAGES, f"hydra.run.dir={tmp_path / 'run'}")
    assert rc == 1
    assert "Error executing job with overrides" in err and "Traceback" in err and "a bug in a stage" in err
    assert "HYDRA_FULL_ERROR=1" in err


# -- a sweep, relaunched -----------------------------------------------------------------------------------
SWEEP = ["run", "-m", *TINY, THREADS, "pruner=magnitude", "sparsity=0.5,0.8", STAGES]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    proc = run_cli(*SWEEP, f"hydra.sweep.dir={folder}", cwd=folder)
    return folder, proc


def job_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


@pytest.mark.slow
def test_sweep_makes_one_folder_per_job_named_by_overrides(sweep):
    folder, proc = sweep
    ok(proc)
    jobs = job_dirs(folder)
    assert len(jobs) == 2
    assert "sparsity=0.5" in jobs[0].name and "sparsity=0.8" in jobs[1].name
    for job in jobs:
        assert "model=mlp1d" in job.name and "runtime.progress" not in job.name  # runtime keys are excluded
        results = json.loads((job / "evaluate" / "results.json").read_text())
        assert results["density"]["measured_kept"] == results["density"]["target_kept"]
        assert 0 <= results["test_acc"] <= 1
        # the run directory layout
        assert json.loads((job / "run.json").read_text())["config"]["sparsity"] in (0.5, 0.8)
        assert "stage evaluate: done" in (job / "run.log").read_text()
        sessions = [p for p in (job / ".hydra").iterdir() if p.is_dir()]
        assert sessions and all((s / "config.yaml").exists() for s in sessions)
    assert (folder / "multirun.yaml").exists()


@pytest.mark.slow
def test_relaunching_a_sweep_skips_finished_stages(sweep):
    folder, first = sweep
    ok(first)
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*.pt")}
    jobs = job_dirs(folder)
    out = ok(run_cli(*SWEEP, f"hydra.sweep.dir={folder}", cwd=folder))
    assert out.count("already complete, skipped") == 8  # 2 jobs x 4 stages
    assert "stage search: starting" not in out
    assert job_dirs(folder) == jobs
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.pt")} == stamps
    for job in jobs:
        log = (job / "run.log").read_text()  # appended by every session
        assert log.count("stage search: starting") == 1 and log.count("already complete, skipped") == 4


@pytest.mark.slow
def test_report_prints_a_table(sweep, tmp_path, cli):
    folder, proc = sweep
    ok(proc)
    out = ok(run_cli("report", str(folder), cwd=tmp_path))
    assert "magnitude" in out and "0.5" in out and "0.8" in out and "accuracy by method and sparsity" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no runs found" in one_line_error(cli("report", str(empty)))


# -- a single run, resumed ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_directory_and_resume(tmp_path, cli):
    run_dir = tmp_path / "run"
    ok(run_cli("run", *TINY, THREADS, "pruner=random", "stages=[search,rewind,retrain]",
               f"hydra.run.dir={run_dir}", cwd=tmp_path))
    record = json.loads((run_dir / "run.json").read_text())
    assert "stages=[search,rewind,retrain]" in record["overrides"] and record["label"] == "random"
    assert (run_dir / "run.log").read_text().count("stage retrain: done") == 1
    (session,) = [p for p in (run_dir / ".hydra").iterdir() if p.is_dir()]
    assert {"config.yaml", "overrides.yaml", "hydra.yaml"} <= {p.name for p in session.iterdir()}
    assert not (run_dir / "evaluate").exists()
    # as if the retrain stage had been killed after its last checkpoint, and evaluate had not run yet
    (run_dir / "retrain" / "DONE.json").unlink()
    (run_dir / "retrain" / "final.pt").unlink()
    # continue in place, from another working directory, adding the evaluate stage
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = ok(run_cli("resume", str(run_dir), STAGES, THREADS, cwd=elsewhere))
    assert "stage search: already complete, skipped" in out and "stage retrain: done" in out
    assert "resuming at epoch 3/3" in out and "retrain epoch" not in out  # nothing trained twice
    assert (run_dir / "retrain" / "DONE.json").exists() and (run_dir / "evaluate" / "results.json").exists()
    assert list(elsewhere.iterdir()) == []
    assert json.loads((run_dir / "run.json").read_text()) == record  # written once
    # a changed experiment is refused, as is a folder that is not a run
    assert "sparsity=0.3" in one_line_error(cli("resume", str(run_dir), "sparsity=0.3"))
    assert "is not an ltsearch run directory" in one_line_error(cli("resume", str(elsewhere)))
    assert "is not a directory" in one_line_error(cli("resume", str(tmp_path / "nope")))
    assert "resume needs a run directory" in one_line_error(cli("resume"))


# -- shell completion --------------------------------------------------------------------------------------
def test_shell_completion(cli):
    def complete(line: str) -> set[str]:
        rc, out, _ = cli("-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
        assert rc == 0
        return set(out.split())

    assert complete("ltsearch run pru") >= {"pruner="}
    assert complete("ltsearch run pruner=") >= {"pruner=magnitude", "pruner=random", "pruner=dense"}
    assert complete("ltsearch run model=res") >= {"model=resnet18", "model=resnet20", "model=resnet56"}
    assert complete("ltsearch ") == {"run", "resume", "report", "cache", "export"}
    assert complete("ltsearch resume ") == set()  # the shell completes the folder
    rc, script, _ = cli("run", "-sc", "install=bash")
    assert rc == 0 and "complete -o nospace -o default -F hydra_bash_completion ltsearch" in script
    assert "-sc query=bash" in script
    # `python -m ltsearch` (argv[0] = .../ltsearch/__main__.py) installs completion for `ltsearch`, not `python`
    rc, script, _ = cli("run", "-sc", "install=bash", prog=str(REPO / "ltsearch" / "__main__.py"))
    assert rc == 0 and script.strip().endswith("-F hydra_bash_completion ltsearch")


# -- config-group preselection by a pruner ----------------------------------------------------------------
def test_cts_kl_preselects_reverse_kl_but_the_command_line_wins(cli):
    if not (REPO / "conf" / "pruner" / "cts_kl.yaml").exists():
        pytest.skip("conf/pruner/cts_kl.yaml does not exist yet")
    assert make_config("pruner=cts_kl").objective.name == "reverse_kl"
    assert make_config("pruner=cts_kl", "objective=forward_kl").objective.name == "forward_kl"
    assert make_config("objective=forward_kl", "pruner=cts_kl").objective.name == "forward_kl"
    assert make_config("pruner=magnitude").objective.name == "task"
    rc, out, _ = cli("run", "--cfg", "job", "pruner=cts_kl", "objective=forward_kl")
    assert rc == 0 and yaml.safe_load(out)["objective"]["name"] == "forward_kl"
    rc, out, _ = cli("run", "--cfg", "job", "pruner=cts_kl")
    assert rc == 0 and yaml.safe_load(out)["objective"]["name"] == "reverse_kl"
