"""The objective interface: what a mask search minimises, as a function of one batch seen through the
network with and without the mask (`MaskedNetwork`).

Each objective carries the constant the CTS authors multiply it by before taking gradients (`scale`). The
constant matters: the search's optimiser is Adam with eps = 1e-8, and a sizeable share of the per-logit
gradients of the unscaled objectives lies near or below eps, where Adam's step shrinks with the gradient
instead of being scale-free. The search steps on `scale * value`; logs and metrics report `value`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

from torch import Tensor

from ltsearch.objectives.network import MaskedNetwork

Teacher = Literal["none", "logits", "network"]


class Objective(ABC):
    """Subclass, set `scale`, `teacher` and `extra_passes`, implement `value`; register the class in
    `ltsearch.objectives.OBJECTIVES`.

    teacher: "none" (the masked network alone), "logits" (the unmasked network's logits, which the search
    may compute once per sample and reuse when they cannot change), or "network" (anything else of the
    unmasked network, computed inside `value` on every batch).
    extra_passes: compute per sample beyond the masked forward and backward and a "logits" teacher's
    forward, in passes of the network ("forward": a forward, "train": a forward and a backward), for the
    cost accounting.
    """

    scale: ClassVar[float] = 100.0
    teacher: ClassVar[Teacher] = "none"
    extra_passes: ClassVar[dict[str, int]] = {}

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    @abstractmethod
    def value(self, net: MaskedNetwork, x: Tensor, y: Tensor, teacher: Tensor | None) -> Tensor:
        """The objective on one batch (a scalar with a graph back to the mask); `teacher`: the unmasked
        network's logits for `x` when `self.teacher == "logits"`, else None."""


class LogitObjective(Objective):
    """An objective of the logits alone: it can also judge a hard mask from saved logits."""

    def value(self, net: MaskedNetwork, x: Tensor, y: Tensor, teacher: Tensor | None) -> Tensor:
        return self.from_logits(net.logits(x), teacher, y)

    @abstractmethod
    def from_logits(self, student: Tensor, teacher: Tensor | None, targets: Tensor) -> Tensor:
        """The objective from the masked network's logits and, when needed, the unmasked network's."""
