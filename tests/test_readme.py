"""The README's Python API example runs as written, and its everyday `ltsearch run` commands compose."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from ltsearch import cli
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_python_api_example_runs(tmp_path):
    (code,) = re.findall(r"```python\n(.*?)```", section("Python API"), re.S)
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "LTSEARCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "weights kept; ['0.weight']" in proc.stdout
    assert (tmp_path / "outputs" / "runs" / "api_example" / "evaluate" / "results.json").exists()


def everyday_runs() -> list[list[str]]:
    """The single-run `ltsearch run` lines of the everyday commands (not sweeps, not `...` placeholders)."""
    (block,) = re.findall(r"```bash\n(.*?)```", section("Everyday commands"), re.S)
    commands = []
    for line in block.splitlines():
        words = shlex.split(line.split("  #")[0])
        if words[:2] == ["ltsearch", "run"] and "-m" not in words and "..." not in words and len(words) > 2 \
                and not any(w.startswith(("--", "-sc")) for w in words):
            commands.append(words[2:])
    return commands


@pytest.mark.parametrize("args", everyday_runs(), ids=lambda a: " ".join(a)[:60])
def test_everyday_commands_compose(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ltsearch", "run", *args])
    try:
        rc = cli.main(["run", *args, "--cfg", "job"])
    except SystemExit as exc:
        rc = exc.code
    finally:
        GlobalHydra.instance().clear()
    out, err = capsys.readouterr()
    assert rc == 0 and "sparsity:" in out, err


def test_everyday_commands_name_the_users_data_not_the_ci_folder(capsys, monkeypatch):
    """../shared/datasets exists beside this repository's CI checkout only; a user types ~/data (which a
    shell such as zsh leaves unexpanded after `=`: ltsearch takes it as it is)."""
    assert "dataset.root=../shared" not in README
    runs = everyday_runs()
    assert any("dataset.root=~/data" in args and "dataset.download=true" in args for args in runs)
    assert any(a.startswith("dataset.root=~/") and a.endswith(".tar.gz") for args in runs for a in args)
    monkeypatch.setattr(sys, "argv", ["ltsearch", "run"])
    try:
        assert cli.main(["run", "dataset.root=~/data", "--cfg", "job"]) == 0
    finally:
        GlobalHydra.instance().clear()
    assert "root: ~/data" in capsys.readouterr().out


def test_section_titles_name_their_topic_not_an_issue():
    for doc in ("README.md", "BENCHMARKS.md"):
        titles = [line for line in (REPO / doc).read_text().splitlines() if line.startswith("#")]
        assert not [t for t in titles if re.search(r"\bissues? #?\d", t, re.I)], doc
