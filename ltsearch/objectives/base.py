"""The objective interface: what a mask search minimises, as a function of the masked network's logits
(the student) and, for objectives that compare with it, the unmasked network's logits (the teacher, the
same weights at the pruning point)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor


class Objective(ABC):
    """Subclass, say whether the teacher is needed, implement `value`; register the class in
    `ltsearch.objectives.OBJECTIVES`. `temperature` divides both logits before a softmax."""

    needs_teacher: ClassVar[bool] = False

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    @abstractmethod
    def value(self, student: Tensor, teacher: Tensor | None, targets: Tensor) -> Tensor:
        """The batch mean of the objective (a scalar with a graph back to the student's logits)."""
