"""Pruner registry, discovered from the modules of this package: adding a method is one file here
(a `Pruner` subclass with a `key` and a `Config`) plus one YAML file in conf/pruner/."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from ltsearch.errors import ConfigError
from ltsearch.pruners.base import PruneContext, Pruner, PrunerConfig, PruneResult, ScorePruner

__all__ = ["Pruner", "PrunerConfig", "PruneContext", "PruneResult", "ScorePruner", "registry", "build_pruner"]


@cache
def registry() -> dict[str, type[Pruner]]:
    found: dict[str, type[Pruner]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Pruner) and obj.key and obj.__module__ == module.__name__:
                found[obj.key] = obj
    return dict(sorted(found.items()))


def build_pruner(cfg: PrunerConfig) -> Pruner:
    pruners = registry()
    if cfg.name not in pruners:
        raise ConfigError(f"unknown pruner.name '{cfg.name}'; known: {', '.join(pruners)}")
    return pruners[cfg.name](cfg)
