"""What a mask should preserve, as a function of the masked network's logits.

- task:       CE(student, y)
- reverse_kl: KL(p_student || p_teacher) = sum p_s (log p_s - log p_t)   (CTS-KL, the paper's best)
- forward_kl: KL(p_teacher || p_student)                                 (the distillation direction)

The teacher is the same network with the mask off, at the pruning point. Batch mean; temperature T
divides both logits before the softmax.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ltsearch.config import ObjectiveName

NAMES = tuple(o.value for o in ObjectiveName)


def objective(name: str | ObjectiveName, student: Tensor, teacher: Tensor | None, targets: Tensor,
              temperature: float = 1.0) -> Tensor:
    name = ObjectiveName(name)
    if name == ObjectiveName.task:
        return F.cross_entropy(student.float(), targets)
    if teacher is None:
        raise ValueError(f"objective '{name.value}' needs the dense teacher's logits")
    log_s = F.log_softmax(student.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=1)
    if name == ObjectiveName.reverse_kl:
        return (log_s.exp() * (log_s - log_t)).sum(1).mean()
    return (log_t.exp() * (log_t - log_s)).sum(1).mean()
