"""The console contract of `ltsearch run` (through a real process, as a user sees it): per-epoch lines only in
run.log, one line per finished stage, the summary, the run directory at the start and the end, -q and -v,
totals that add up, --version, a closed pipe, a missing extra named with its pip command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from ltsearch import cli as ltsearch_cli
from ltsearch import overrides
from tests.conftest import REPO, TINY, run_cli

STAGES = ("search", "rewind", "retrain", "sanity", "evaluate")
RUN = ["run", *TINY, "runtime.threads=1", "pruner=magnitude", "sparsity=0.9", "sanity.variants=[shuffle]"]
SUMMARY_ROWS = ("in one line", "test accuracy", "before retraining", "density", "sanity checks", "wall time", "compute")


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def normal(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("console") / "run"
    proc = run_cli(*RUN, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


@pytest.mark.slow
def test_a_normal_run_prints_the_run_dir_one_line_per_stage_and_the_summary(normal):
    run_dir, proc = normal
    out = lines(proc.stdout)
    assert proc.stderr.strip() == ""
    assert out[0] == f"ltsearch: run directory {run_dir}"
    for i, stage in enumerate(STAGES, 1):
        assert out[i].startswith(f"stage {stage}: done in "), out[i]
    # the summary: a title, a box of one row per item, then the closing line with the run directory
    assert "ltsearch: magnitude at sparsity 0.9" in out[6]
    for row in SUMMARY_ROWS:
        assert sum(ln.startswith(f"│ {row} ") for ln in out[7:-1]) == 1, row
    assert out[-1].startswith("ltsearch: magnitude at sparsity 0.9: test accuracy ") and out[-1].endswith(str(run_dir))
    assert len(out) == 1 + len(STAGES) + 1 + (len(SUMMARY_ROWS) + 2) + 1
    assert not re.search(r"epoch \d+/\d+", proc.stdout)  # no per-epoch line on the console...
    log = (run_dir / "run.log").read_text()
    assert log.count("retrain epoch") == 3 and log.count("shuffle epoch") == 3  # ...they are in run.log


@pytest.mark.slow
def test_totals_add_up(normal):
    run_dir, proc = normal
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    times = results["wall_time"]
    assert times["total"] == pytest.approx(sum(times[s] for s in STAGES), abs=1e-9)
    assert times["ticket"] == pytest.approx(times["total"] - times["sanity"], abs=1e-9)
    cost = results["cost"]
    assert cost["total"]["epochs"] == pytest.approx(sum(cost["stages"][s]["epochs"] for s in STAGES))
    # the printed line adds up too (to its rounding)
    line = next(ln for ln in proc.stdout.splitlines() if "wall time" in ln)
    shown = {k: float(v) for k, v in re.findall(r"(\w+) (\d+\.\d)s", line)}
    ticket = float(re.search(r"(\d+\.\d)s for the ticket", line).group(1))
    total = float(re.search(r"total (\d+\.\d)s", line).group(1))
    assert ticket == pytest.approx(sum(shown[s] for s in STAGES if s != "sanity"), abs=0.051 * 4)
    assert total == pytest.approx(ticket + shown["sanity"], abs=0.051 * 2)
    assert total == pytest.approx(times["total"], abs=0.051)


@pytest.mark.slow
def test_quiet_prints_one_line_and_verbose_every_epoch(tmp_path, normal):
    quiet = run_cli(*RUN, "-q", f"hydra.run.dir={tmp_path / 'quiet'}")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    (only,) = lines(quiet.stdout + quiet.stderr)  # one line: the normal run's closing line

    def untimed(line: str, run_dir: Path) -> str:
        return re.sub(r" \([\d.ms]+\)", "", line).replace(str(run_dir), "RUN")

    assert untimed(only, tmp_path / "quiet") == untimed(lines(normal[1].stdout)[-1], normal[0])
    assert (tmp_path / "quiet" / "run.log").read_text().count("retrain epoch") == 3
    verbose = run_cli(*RUN, "-v", "stages=[search,rewind,retrain]", f"hydra.run.dir={tmp_path / 'verbose'}")
    assert verbose.returncode == 0
    assert verbose.stdout.count("retrain epoch") == 3 and "stage retrain: starting" in verbose.stdout


@pytest.mark.slow
def test_a_closed_pipe_neither_tracebacks_nor_stops_the_run(tmp_path):
    run_dir = tmp_path / "run"
    command = " ".join([sys.executable, "-m", "ltsearch", *RUN, "stages=[search,rewind,retrain,evaluate]",
                        f"hydra.run.dir={run_dir}", "| head -1"])
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, cwd=REPO,
                          timeout=600, env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ltsearch: run directory {run_dir}"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and "Exception" not in proc.stderr
    assert (run_dir / "evaluate" / "results.json").exists()  # the run went on to its end
    report = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} -m ltsearch report {run_dir} "
                             f"--no-plots | head -1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert report.returncode == 0 and "Traceback" not in report.stderr


def test_version(cli_main, capsys):
    for args in (["--version"], ["run", "--version"]):
        assert cli_main(args) == 0
        assert capsys.readouterr().out.strip() == f"ltsearch {version('ltsearch')}"


def test_verbosity_flags_become_an_override_beside_the_others():
    convert = overrides.verbosity_overrides
    assert convert(["-q", "-m", "a=1", "b=2"]) == ["-m", "runtime.verbosity=quiet", "a=1", "b=2"]
    assert convert(["a=1", "--cfg", "job", "-v"]) == ["runtime.verbosity=verbose", "a=1", "--cfg", "job"]
    assert convert(["--cfg", "job", "--verbose", "--quiet"]) == ["--cfg", "job", "runtime.verbosity=quiet"]
    assert convert(["a=1"]) == ["a=1"]


def test_a_missing_extra_is_named_with_its_pip_command(cli_main, capsys, monkeypatch):
    monkeypatch.setattr(overrides, "_installed", lambda module: False)
    for args, extra in ((["-m", "hydra/launcher=joblib"], "joblib"), (["-m", "hydra/launcher=slurm"], "slurm"),
                        (["-m", "+sweep=optuna_cts"], "optuna")):
        assert cli_main(["run", *args, "pruner=magnitude"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"pip install 'ltsearch[{extra}]'") and len(err.splitlines()) == 1, err


@pytest.fixture
def cli_main(monkeypatch):
    def call(args: list[str]) -> int:
        monkeypatch.setattr(sys, "argv", ["ltsearch", *args])
        return ltsearch_cli.main(args)

    return call


def test_the_usage_lists_every_command(cli_main, capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ltsearch_cli.COMMANDS:
        assert f"\n  {command} " in out
    assert max(len(ln) for ln in out.splitlines()) <= 120


def test_stage_lines_say_what_each_stage_did(normal):
    run_dir, proc = normal
    out = {ln.split(":")[0]: ln for ln in proc.stdout.splitlines() if ln.startswith("stage ")}
    assert "weights kept" in out["stage search"] and "test accuracy before retraining" in out["stage search"]
    assert re.search(r"test accuracy \d\.\d{4} at epoch 3", out["stage retrain"])
    assert re.search(r"shuffle [+-]\d\.\d{4} (pass|FAIL)", out["stage sanity"])
    assert Path(run_dir / "evaluate" / "DONE.json").exists()


def test_a_sweep_console_has_no_library_chatter(tmp_path):
    """The sweep summary writes PDF plots; the font subsetter's INFO records must not reach the console."""
    proc = run_cli("run", "-m", *RUN[1:], "stages=[search,rewind,retrain,evaluate]", "sparsity=0.5,0.9", "-q",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep summary: wrote" in proc.stdout + proc.stderr
    assert (tmp_path / "sweep" / "accuracy_vs_sparsity.pdf").exists()
    assert not re.search(r"\] (GDEF|GPOS|GSUB|name|glyf) pruned|fontTools", proc.stdout + proc.stderr)
