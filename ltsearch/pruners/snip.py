"""SNIP (Lee et al. 2019): keep the k weights of largest |w * dL/dw| (= |dL/dm| at m = 1), single shot.

L is the cross-entropy of the network at the pruning point on one batch: `batch_per_class` examples of
every class (class-balanced, the default: 10 per class), or `batch_size` random training examples when
that is > 0. BatchNorm runs on the batch statistics; its saved running statistics are left unchanged.
The batch is drawn from a generator seeded by the run seed, so the mask is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltsearch.masking import batch_statistics, original_weights
from ltsearch.pruners.base import PruneContext, PrunerConfig, ScorePruner


@dataclass
class SnipConfig(PrunerConfig):
    """`batch_per_class` examples per class (class-balanced), or `batch_size` random examples if > 0."""

    batch_per_class: int = 10
    batch_size: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 0:
            raise ValueError(f"pruner.batch_size must be >= 0 (0 = use batch_per_class), got {self.batch_size}")
        if self.batch_size == 0 and self.batch_per_class < 1:
            raise ValueError(f"pruner.batch_per_class must be >= 1 (examples of each class in the pruning batch), "
                             f"got {self.batch_per_class}")


def pruning_batch(ctx: PruneContext, cfg: SnipConfig, key: str) -> tuple[Tensor, Tensor]:
    """The seeded, un-augmented training batch the scores are computed on, on the device."""
    if cfg.batch_size > 0:
        return ctx.data.sample(cfg.batch_size, ctx.seed, key, device=ctx.runtime.device)
    return ctx.data.sample(cfg.batch_per_class, ctx.seed, key, per_class=True, device=ctx.runtime.device)


@contextmanager
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout), BatchNorm on batch statistics, running statistics restored afterwards.
    Compute every gradient inside the block: the restore modifies buffers that autograd may have saved."""
    was_training = model.training
    model.eval()
    try:
        with batch_statistics(model):
            yield
    finally:
        model.train(was_training)


def snip_scores(model: nn.Module, x: Tensor, y: Tensor, exclude: list[str] | tuple[str, ...] = ()) -> dict[str, Tensor]:
    """|w * dL/dw| for every prunable weight (w and the gradient of the stored weight; zero where masked)."""
    weights = original_weights(model, exclude)
    with scoring_mode(model):
        loss = F.cross_entropy(model(x).float(), y)
        grads = torch.autograd.grad(loss, list(weights.values()))
    return {name: (w.detach() * g).abs() for (name, w), g in zip(weights.items(), grads, strict=True)}


class SnipPruner(ScorePruner):
    Config = SnipConfig

    def scores(self, ctx: PruneContext) -> dict[str, Tensor]:
        x, y = pruning_batch(ctx, self.cfg, "snip")
        return snip_scores(ctx.model, x, y, ctx.exclude)
