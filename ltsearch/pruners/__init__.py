"""The pruner registry: `pruner.name` -> class. Adding a method is one file here (a `Pruner` subclass with
its `Config` dataclass), one line in `PRUNERS`, and one YAML file in conf/pruner/."""

from __future__ import annotations

from ltsearch.errors import ConfigError
from ltsearch.pruners.base import PruneContext, Pruner, PrunerConfig, PruneResult, ScorePruner
from ltsearch.pruners.cts import CTSPruner
from ltsearch.pruners.dense import DensePruner
from ltsearch.pruners.grasp import GraspPruner
from ltsearch.pruners.imp import IMPPruner
from ltsearch.pruners.magnitude import MagnitudePruner
from ltsearch.pruners.random import RandomPruner
from ltsearch.pruners.snip import SnipPruner
from ltsearch.pruners.synflow import SynFlowPruner

__all__ = ["PRUNERS", "Pruner", "PrunerConfig", "PruneContext", "PruneResult", "ScorePruner", "build_pruner"]

PRUNERS: dict[str, type[Pruner]] = {
    "cts": CTSPruner,
    "dense": DensePruner,
    "grasp": GraspPruner,
    "imp": IMPPruner,
    "magnitude": MagnitudePruner,
    "random": RandomPruner,
    "snip": SnipPruner,
    "synflow": SynFlowPruner,
}


def build_pruner(cfg: PrunerConfig) -> Pruner:
    """The pruner named by `cfg.name`, configured by `cfg` (an instance of that pruner's `Config`)."""
    if cfg.name not in PRUNERS:
        raise ConfigError(f"unknown pruner.name '{cfg.name}'; known: {', '.join(PRUNERS)}")
    return PRUNERS[cfg.name](cfg)
