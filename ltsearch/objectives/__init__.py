"""The objective registry: `objective.name` -> class. Adding an objective is one file here (an `Objective`
subclass), one line in `OBJECTIVES`, and one YAML file in conf/objective/."""

from __future__ import annotations

from torch import Tensor

from ltsearch.config import ObjectiveConfig
from ltsearch.errors import ConfigError
from ltsearch.objectives.base import Objective
from ltsearch.objectives.kl import ForwardKL, ReverseKL
from ltsearch.objectives.task import TaskLoss

__all__ = ["OBJECTIVES", "Objective", "build_objective", "evaluate_all"]

OBJECTIVES: dict[str, type[Objective]] = {
    "task": TaskLoss,
    "forward_kl": ForwardKL,
    "reverse_kl": ReverseKL,
}


def build_objective(cfg: ObjectiveConfig) -> Objective:
    if cfg.name not in OBJECTIVES:
        raise ConfigError(f"unknown objective.name '{cfg.name}'; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.name](cfg.temperature)


def evaluate_all(student: Tensor, teacher: Tensor, targets: Tensor, temperature: float) -> dict[str, float]:
    """Every registered objective's value on the same logits (the search stage's record of a mask)."""
    return {name: float(cls(temperature).value(student, teacher, targets)) for name, cls in OBJECTIVES.items()}
