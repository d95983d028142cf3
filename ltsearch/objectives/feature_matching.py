"""Feature matching: how far the masked network's features are from the unmasked network's.

For every `nn.ReLU` output (in call order) and for the softmax of the logits, both networks' outputs on the
batch are flattened per sample and standardised per sample ((a - mean) / (std + 1e-9), unbiased std over
the sample's entries); the objective is the mean over these layers of the mean squared difference. The
unmasked network runs under no_grad. Scaled by 100 in the search, as by the CTS authors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ltsearch.objectives.base import Objective
from ltsearch.objectives.network import MaskedNetwork, standardise_rows


def features(net: MaskedNetwork, x: Tensor, masked: bool) -> list[Tensor]:
    """The ReLU outputs and the softmax of the logits, each standardised per sample."""
    run = net.run(x, masked=masked, capture=True)
    return [standardise_rows(a) for a in [*run.activations, torch.softmax(run.logits, dim=1)]]


class FeatureMatching(Objective):
    scale = 100.0
    teacher = "network"
    extra_passes = {"forward": 1}  # the unmasked forward

    def value(self, net: MaskedNetwork, x: Tensor, y: Tensor, teacher: Tensor | None) -> Tensor:
        with torch.no_grad():
            dense = features(net, x, masked=False)
        sparse = features(net, x, masked=True)
        return torch.stack([F.mse_loss(s, d) for s, d in zip(sparse, dense, strict=True)]).mean()
