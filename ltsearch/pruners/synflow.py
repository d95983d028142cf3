"""SynFlow (Tanaka et al. 2020): data-free, iterative pruning by synaptic flow.

On a copy of the network (the original is never touched, so its signs need no restoring) every parameter
and buffer is replaced by its absolute value and BatchNorm runs in eval mode. A BatchNorm without running
statistics (`model.bn_stats=batch`) would normalise the single all-ones input by its own statistics; it gets
fresh running statistics (mean 0, variance 1) instead, as the CTS authors build SynFlow's network with
`bn_track=True` (a fresh network's statistics, whatever the pruning point's weights): BatchNorm is then the
affine map |gamma| x / sqrt(1 + eps) + |beta|, exactly what a network with running statistics at
initialisation computes. With an all-ones input of
batch 1 and R = sum of the outputs, the score of a weight is |w * dR/dw|, computed on the effective
(masked) weights. Round n of `rounds` keeps density d^(n/rounds) (exponential schedule) among the weights
still kept (pruned entries score -inf, so the masks of successive rounds are nested); the last round keeps
exactly k. The scoring pass runs in float64 by default: R is a product over layers and overflows float32
on deep networks.

The scores returned for the record are the natural log of the last round's scores (the same order; the
raw values span hundreds of orders of magnitude on deep networks and would not survive a float32 copy).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ltsearch.masking import Masks, count, detach_masks, keep_count, prunable_modules, topk_masks
from ltsearch.pruners.base import PruneContext, Pruner, PrunerConfig, PruneResult

log = logging.getLogger(__name__)


@dataclass
class SynFlowConfig(PrunerConfig):
    rounds: int = 100
    float64: bool = True

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"pruner.rounds must be >= 1 (pruning rounds of SynFlow), got {self.rounds}")


def unit_running_statistics(net: nn.Module) -> None:
    """Give every BatchNorm that has no running statistics fresh ones (mean 0, variance 1), in place."""
    ref = next(net.parameters())
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            m.register_buffer("running_mean", torch.zeros(m.num_features, dtype=ref.dtype, device=ref.device))
            m.register_buffer("running_var", torch.ones(m.num_features, dtype=ref.dtype, device=ref.device))
            m.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long, device=ref.device))
            m.track_running_stats = True


def linearized_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` without masks, in `dtype`, in eval mode, with |parameters| and |buffers|."""
    net = detach_masks(copy.deepcopy(model)).to(dtype)
    unit_running_statistics(net)
    net.eval()
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            tensor.abs_()
    return net


def synflow_scores(net: nn.Module, x: Tensor, exclude: list[str] | tuple[str, ...] = ()) -> dict[str, Tensor]:
    """|w * dR/dw| with R = sum(net(x)), for every prunable weight of `net` (used as it is)."""
    weights = {name: module.weight for name, module in prunable_modules(net, exclude).items()}
    flow = net(x).sum()
    grads = torch.autograd.grad(flow, list(weights.values()))
    return {name: (w.detach() * g).abs() for (name, w), g in zip(weights.items(), grads, strict=True)}


def synflow_rounds(net: nn.Module, x: Tensor, keeps: list[int],
                   exclude: list[str] | tuple[str, ...] = ()) -> Iterator[tuple[Masks, dict[str, Tensor]]]:
    """Prune `net` in place round by round, keeping keeps[n] weights in round n; yield (masks, scores)."""
    modules = prunable_modules(net, exclude)
    masks: Masks | None = None
    for k in keeps:
        scores = synflow_scores(net, x, exclude)
        masks = topk_masks(scores, k, keep_mask=masks)
        with torch.no_grad():
            for name, module in modules.items():
                module.weight.mul_(masks[name].to(module.weight.device, module.weight.dtype))
        yield masks, scores


class SynFlowPruner(Pruner):
    Config = SynFlowConfig

    def prune(self, ctx: PruneContext) -> PruneResult:
        dtype = torch.float64 if self.cfg.float64 else torch.float32
        net = linearized_copy(ctx.model, dtype)
        x = torch.ones(1, *ctx.data.input_shape, dtype=dtype, device=ctx.runtime.device)
        rounds = self.cfg.rounds
        keeps = [keep_count(ctx.density ** (n / rounds), ctx.total) for n in range(1, rounds)] + [ctx.keep]
        for n, result in enumerate(synflow_rounds(net, x, keeps, ctx.exclude), start=1):
            masks, scores = result
            if n % 10 == 0 or n == rounds:
                log.info("synflow: round %d/%d keeps %d of %d", n, rounds, count(masks)[0], ctx.total)
        record = {name: s.log().float().cpu() for name, s in scores.items()}  # log(0) = -inf: pruned earlier
        return PruneResult(masks, record, {"rounds": rounds, "float64": self.cfg.float64,
                                           "schedule": "exponential"})
