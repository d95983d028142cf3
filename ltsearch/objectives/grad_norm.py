"""Gradient norm (GraSP-like): -||grad_theta CE(student, y)||_2, the negated L2 norm of the masked network's
loss gradient with respect to all its parameters (every conv/linear weight w, BatchNorm and bias), taken
with respect to the raw weights w (the network computes with w * m), so minimising it maximises gradient
flow through the mask. The gradient keeps its graph (a double backward reaches the mask). Scale 1, as by
the CTS authors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ltsearch.objectives.base import Objective
from ltsearch.objectives.network import MaskedNetwork


class GradientNorm(Objective):
    scale = 1.0
    teacher = "none"
    extra_passes = {"train": 1}  # the double backward

    def value(self, net: MaskedNetwork, x: Tensor, y: Tensor, teacher: Tensor | None) -> Tensor:
        run = net.run(x, masked=True, leaves="all")
        loss = F.cross_entropy(run.logits, y)
        grads = torch.autograd.grad(loss, run.leaves, create_graph=True, allow_unused=True)
        squares = [g.square().sum() for g in grads if g is not None]
        return -torch.stack(squares).sum().sqrt()
