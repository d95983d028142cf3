"""The task loss: CE(student, y), the masked network's cross-entropy on the labels (CTS with `objective=task`).
Scaled by 100 in the search, as by the CTS authors."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ltsearch.objectives.base import LogitObjective


class TaskLoss(LogitObjective):
    scale = 100.0

    def from_logits(self, student: Tensor, teacher: Tensor | None, targets: Tensor) -> Tensor:
        return F.cross_entropy(student.float(), targets)
