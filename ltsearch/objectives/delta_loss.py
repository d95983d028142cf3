"""Delta loss: |CE(student, y) / CE(teacher, y) - 1|, how far the masked network's loss is from the
unmasked network's, relative to it (both batch means; the teacher's under no_grad). Scaled by 1e4 in the
search, as by the CTS authors."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ltsearch.objectives.base import LogitObjective


class DeltaLoss(LogitObjective):
    scale = 1e4
    teacher = "logits"

    def from_logits(self, student: Tensor, teacher: Tensor | None, targets: Tensor) -> Tensor:
        assert teacher is not None
        dense = F.cross_entropy(teacher.float().detach(), targets)
        return (F.cross_entropy(student.float(), targets) / dense - 1).abs()
