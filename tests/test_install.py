"""A non-editable install works from an unrelated directory: the configs ship in the wheel as the package
`ltsearch.conf` (mapped from the top-level conf/ folder in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

TOP_LEVEL_SKIP = {".git", ".venv", "outputs", "multirun", "build", "dist", "data", ".cache", ".whl"}
ANYWHERE_SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")


def ignored(folder: str, names: list[str]) -> set[str]:
    skip = set(ANYWHERE_SKIP(folder, names))
    return skip | (TOP_LEVEL_SKIP & set(names)) if Path(folder) == REPO else skip


def pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (so the build leaves nothing in the working tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=ignored)
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(source), cwd=tmp)
    (whl,) = (tmp / "dist").glob("ltsearch-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_contains_the_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "ltsearch/conf/__init__.py" in names and "ltsearch/conf/config.yaml" in names
    shipped = {n.removeprefix("ltsearch/conf/") for n in names if n.startswith("ltsearch/conf/") and n.endswith(".yaml")}
    in_repo = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == in_repo
    for group in ("model", "dataset", "train", "pruner", "objective", "experiment"):
        assert any(n.startswith(f"{group}/") for n in shipped), group
    assert {"model/resnet20.yaml", "dataset/mnist1d.yaml", "pruner/magnitude.yaml", "hydra/help/ltsearch.yaml",
            "hydra/job_logging/rich.yaml"} <= shipped
    assert not any(n.startswith(("tests/", "conf/", "scripts/")) for n in names)
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "ltsearch").rglob("__init__.py")}
    assert {f"{package}/__init__.py" for package in packages} <= names  # every subpackage ships
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "ltsearch = ltsearch.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_installed_package_runs_from_an_unrelated_directory(wheel, tmp_path):
    site = tmp_path / "site"
    pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    where = subprocess.run([sys.executable, "-c", "import ltsearch, ltsearch.conf, ltsearch.app; "
                            "print(ltsearch.__file__); print(ltsearch.conf.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(site.resolve()), line  # not the editable checkout
    proc = subprocess.run([sys.executable, "-m", "ltsearch", "run", "--cfg", "job", "experiment=lenet_mnist",
                           "pruner=magnitude", "sparsity=0.9"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["hidden"] == [300, 100] and cfg["dataset"]["name"] == "mnist"
    assert cfg["pruner"]["name"] == "magnitude" and cfg["sparsity"] == 0.9
    assert list(work.iterdir()) == []
