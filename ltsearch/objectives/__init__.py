"""The objective registry: `objective.name` -> class. Adding an objective is one file here (an `Objective`
subclass with its scale), one line in `OBJECTIVES`, and one YAML file in conf/objective/."""

from __future__ import annotations

from torch import Tensor

from ltsearch.config import ObjectiveConfig
from ltsearch.errors import ConfigError
from ltsearch.objectives.base import LogitObjective, Objective
from ltsearch.objectives.delta_loss import DeltaLoss
from ltsearch.objectives.feature_matching import FeatureMatching
from ltsearch.objectives.grad_matching import GradientMatching
from ltsearch.objectives.grad_norm import GradientNorm
from ltsearch.objectives.kl import ForwardKL, ReverseKL
from ltsearch.objectives.network import MaskedNetwork
from ltsearch.objectives.task import TaskLoss

__all__ = ["OBJECTIVES", "LogitObjective", "MaskedNetwork", "Objective", "build_objective", "evaluate_logits"]

OBJECTIVES: dict[str, type[Objective]] = {
    "task": TaskLoss,
    "forward_kl": ForwardKL,
    "reverse_kl": ReverseKL,
    "delta_loss": DeltaLoss,
    "grad_norm": GradientNorm,
    "feature_matching": FeatureMatching,
    "grad_matching": GradientMatching,
}


def build_objective(cfg: ObjectiveConfig) -> Objective:
    if cfg.name not in OBJECTIVES:
        raise ConfigError(f"unknown objective.name '{cfg.name}'; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.name](cfg.temperature)


def evaluate_logits(student: Tensor, teacher: Tensor, targets: Tensor, temperature: float) -> dict[str, float]:
    """Every registered objective of the logits alone, on the same logits, unscaled (the search stage's
    record of how well a hard mask preserves the unmasked network)."""
    return {name: float(cls(temperature).from_logits(student, teacher, targets))
            for name, cls in OBJECTIVES.items() if issubclass(cls, LogitObjective)}
