"""Global magnitude pruning: keep the k weights of largest |w| at the pruning point (init or rewind)."""

from __future__ import annotations

from torch import Tensor

from ltsearch.pruners.base import PruneContext, ScorePruner, weights_at


class MagnitudePruner(ScorePruner):

    def scores(self, ctx: PruneContext) -> dict[str, Tensor]:
        return {name: w.abs() for name, w in weights_at(ctx).items()}
