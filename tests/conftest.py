"""Shared test helpers: compose configs like the CLI does, run the pipeline in a temp dir, call the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from ltsearch.compose import register_configs, to_config
from ltsearch.config import Config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MNIST_ROOT = SHARED / "datasets"

# A tiny, fast experiment: synthetic data with signal, a small MLP, 3 epochs.
TINY = [
    "dataset=fake",
    "dataset.train_size=256",
    "dataset.test_size=128",
    "model=mlp1d",
    "model.hidden=[32,32]",
    "train=tiny",
    "runtime.progress=false",
]

torch.set_num_threads(min(2, torch.get_num_threads()))


def make_config(*overrides: str) -> Config:
    """Compose `conf/config.yaml` with overrides exactly as `ltsearch run` would, then validate."""
    from ltsearch.models.custom import constructor_overrides

    register_configs()
    with initialize_config_module(config_module="ltsearch.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=constructor_overrides(overrides))
    return to_config(cfg)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m ltsearch ARGS` in a subprocess; returns the completed process (never raises on rc)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "ltsearch", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the artifact and decode caches of the whole test session out of the user's ~/.cache."""
    os.environ["LTSEARCH_CACHE"] = str(tmp_path_factory.mktemp("ltsearch-cache"))


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


@pytest.fixture
def mnist_root() -> Path:
    if not (MNIST_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST not available in {MNIST_ROOT}")
    return MNIST_ROOT
