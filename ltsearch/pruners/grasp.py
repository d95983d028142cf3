"""GraSP (Wang et al. 2020): prune the weights whose removal least reduces (or most increases) gradient flow.

With L the cross-entropy of the logits divided by T (`temperature`, 200) on the pruning batch (the same
options as SNIP: 10 examples per class by default), the Hessian-gradient product is computed by a double
backward: g = dL/dw (no graph), z = dL/dw (with graph), Hg = d(sum z * g)/dw. GraSP's importance of a
weight is S = -w * Hg, the first-order change of the gradient norm when the weight is removed, and the
method removes the weights of LARGEST S: the paper's Algorithm 1 keeps S < tau, and its reference code
keeps `score <= threshold` after taking the top scores for removal. So the kept weights are the k of
smallest S, i.e. of largest w * Hg, which is what `scores` returns (higher = keep, as for every pruner).

g and Hg are taken over every conv/linear weight (also layers excluded from pruning), as in the
reference code; only the prunable weights are scored. Biases and BatchNorm parameters are not part of
the gradient-flow term. BatchNorm runs on batch statistics; running statistics are left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltsearch.masking import original_weights
from ltsearch.pruners.base import PruneContext, ScorePruner
from ltsearch.pruners.snip import SnipConfig, pruning_batch, scoring_mode


@dataclass
class GraspConfig(SnipConfig):
    """SNIP's batch options plus the temperature the logits are divided by."""

    temperature: float = 200.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"pruner.temperature must be > 0 (GraSP divides the logits by it), got {self.temperature}")


def hessian_gradient(model: nn.Module, x: Tensor, y: Tensor, temperature: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(g, Hg) of L = CE(model(x) / T, y) with respect to every conv/linear weight, by name."""
    weights = original_weights(model)
    params = list(weights.values())
    with scoring_mode(model):
        loss = F.cross_entropy(model(x).float() / temperature, y)
        g = [t.detach() for t in torch.autograd.grad(loss, params, retain_graph=True)]
        z = torch.autograd.grad(loss, params, create_graph=True)
        flow = sum((zi * gi).sum() for zi, gi in zip(z, g, strict=True))
        hg = torch.autograd.grad(flow, params)
    names = list(weights)
    return dict(zip(names, g, strict=True)), {n: h.detach() for n, h in zip(names, hg, strict=True)}


def grasp_scores(model: nn.Module, x: Tensor, y: Tensor, temperature: float,
                 exclude: list[str] | tuple[str, ...] = ()) -> dict[str, Tensor]:
    """w * Hg (= -S, GraSP's importance negated: higher = keep) for every prunable weight."""
    _, hg = hessian_gradient(model, x, y, temperature)
    return {name: w.detach() * hg[name] for name, w in original_weights(model, exclude).items()}


class GraspPruner(ScorePruner):
    Config = GraspConfig

    def scores(self, ctx: PruneContext) -> dict[str, Tensor]:
        x, y = pruning_batch(ctx, self.cfg, "grasp")
        return grasp_scores(ctx.model, x, y, self.cfg.temperature, ctx.exclude)
