"""Gradient matching: how far the masked network's loss gradient is from the unmasked network's.

Both gradients are of CE(network(x), y) with respect to the raw prunable weights w (the masked network
computes with w * m); each layer's gradient is standardised over the whole tensor ((g - mean) / std,
unbiased std), and the objective is the mean over layers of the mean squared difference. The unmasked
gradient is detached; the masked one keeps its graph (a double backward reaches the mask). Scaled by 100
in the search, as by the CTS authors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ltsearch.objectives.base import Objective
from ltsearch.objectives.network import MaskedNetwork, standardise


def weight_gradients(net: MaskedNetwork, x: Tensor, y: Tensor, masked: bool) -> list[Tensor]:
    run = net.run(x, masked=masked, leaves="prunable")
    loss = F.cross_entropy(run.logits, y)
    return list(torch.autograd.grad(loss, run.leaves, create_graph=masked))


class GradientMatching(Objective):
    scale = 100.0
    teacher = "network"
    extra_passes = {"train": 2}  # the unmasked forward and backward, and the double backward

    def value(self, net: MaskedNetwork, x: Tensor, y: Tensor, teacher: Tensor | None) -> Tensor:
        dense = [g.detach() for g in weight_gradients(net, x, y, masked=False)]
        sparse = weight_gradients(net, x, y, masked=True)
        return torch.stack([F.mse_loss(standardise(s), standardise(d))
                            for s, d in zip(sparse, dense, strict=True)]).mean()
