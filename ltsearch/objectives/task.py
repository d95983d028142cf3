"""The task loss: CE(student, y), the masked network's cross-entropy on the labels (CTS with `objective=task`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ltsearch.objectives.base import Objective


class TaskLoss(Objective):
    def value(self, student: Tensor, teacher: Tensor | None, targets: Tensor) -> Tensor:
        return F.cross_entropy(student.float(), targets)
