"""Global random pruning: uniform scores from a seeded generator, so every layer keeps about the same
fraction of its weights."""

from __future__ import annotations

from torch import Tensor

from ltsearch.pruners.base import PruneContext, ScorePruner, uniform_scores


class RandomPruner(ScorePruner):

    def scores(self, ctx: PruneContext) -> dict[str, Tensor]:
        return uniform_scores(ctx, "random-pruner")
