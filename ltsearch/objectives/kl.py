"""KL divergences between the masked network (student, p_s) and the unmasked one (teacher, p_t):

- reverse KL: KL(p_s || p_t) = sum p_s (log p_s - log p_t)   (CTS-KL, the paper's best)
- forward KL: KL(p_t || p_s)                                 (the distillation direction)

Batch mean of the per-sample sums; the temperature divides both logits before the softmax. Scaled by 100
in the search, as by the CTS authors.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ltsearch.objectives.base import LogitObjective


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(logits.float() / temperature, dim=1)


class ReverseKL(LogitObjective):
    scale = 100.0
    teacher = "logits"

    def from_logits(self, student: Tensor, teacher: Tensor | None, targets: Tensor) -> Tensor:
        assert teacher is not None
        log_s, log_t = _log_probs(student, self.temperature), _log_probs(teacher, self.temperature)
        return (log_s.exp() * (log_s - log_t)).sum(1).mean()


class ForwardKL(LogitObjective):
    scale = 100.0
    teacher = "logits"

    def from_logits(self, student: Tensor, teacher: Tensor | None, targets: Tensor) -> Tensor:
        assert teacher is not None
        log_s, log_t = _log_probs(student, self.temperature), _log_probs(teacher, self.temperature)
        return (log_t.exp() * (log_t - log_s)).sum(1).mean()
