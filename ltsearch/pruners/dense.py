"""The dense baseline: keep every weight (the `sparsity` setting does not apply)."""

from __future__ import annotations

from ltsearch.masking import full_masks
from ltsearch.pruners.base import PruneContext, Pruner, PruneResult


class DensePruner(Pruner):
    ignores_sparsity = True

    def prune(self, ctx: PruneContext) -> PruneResult:
        return PruneResult(full_masks(ctx.model, ctx.exclude))
