"""Iterative magnitude pruning: IMP (Frankle & Carbin 2019, rewind to w0, `pruner=imp`) and LTR (Frankle et
al. 2019/2020, rewind to w_k after `train.rewind_epoch` epochs, `pruner=ltr`). One class, key "imp".

Level 0 trains the dense network from the start epoch (k, or 0) to the end of the schedule. Level l >= 1
prunes `rate` (20%) of the weights still kept, by |w| of the weights trained at level l-1 (pruned entries
score -inf, so masks are nested), rewinds the survivors to the pruning point and trains them again over
the same epochs. There are L = max(1, ceil(log(d) / log(1 - rate) - 0.25)) levels (11 for sparsity 0.9, 21
for 0.99, 22 for 0.993): level l < L keeps floor((1 - rate)^l N) weights, level L exactly floor(d N); a
target within a quarter level of a power of (1 - rate) is reached by a slightly larger last step instead of
an extra tiny level. The mask of level L is the result; the retrain stage trains it (level L's training).

Every level is a folder `<search>/level_NN/` with mask.pt, its trained weights.pt, metrics.json, epoch
checkpoints while it trains (deleted once it is done) and its own DONE.json, so a killed run resumes
inside the level it was in. `levels.json` in the search folder (and `info["levels"]`) lists every level's
density and final test accuracy: the accuracy-vs-sparsity curve of one run (level L's accuracy is the
retrain stage's).

Layerwise (`layerwise=true`): every layer keeps ceil((1 - rate)^l n_i) of its n_i weights at level l < L
(ceil, so that the last level can always be reached without un-pruning a weight); the last level keeps
exactly floor(d N) in total, split by largest remainder: every layer gets floor(d n_i), and the
r = floor(d N) - sum floor(d n_i) leftover weights go to the r layers of largest fractional part d n_i -
floor(d n_i), ties to the earlier layer. Such a layer gets ceil(d n_i) <= its previous count.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
from dataclasses import dataclass
from typing import Any

from torch import Tensor

import ltsearch.distributed as distributed
from ltsearch.config import When
from ltsearch.masking import Masks, attach_masks, count, full_masks, keep_count, plain_state_dict, topk_masks
from ltsearch.paths import CHECKPOINTS, LEVELS, MASK, WEIGHTS, imp_level
from ltsearch.pruners.base import PruneContext, Pruner, PrunerConfig, PruneResult
from ltsearch.rundir import ArtifactDir

log = logging.getLogger(__name__)


@dataclass
class IMPConfig(PrunerConfig):
    """`rate`: fraction of the remaining weights pruned per level; `layerwise`: per layer instead of global."""

    rate: float = 0.2
    layerwise: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"pruner.rate must be in (0, 1) (the fraction of the remaining weights pruned "
                             f"per level), got {self.rate}")


def num_levels(density: float, rate: float) -> int:
    """Pruning levels needed to reach `density` removing `rate` of the remaining weights per level."""
    if density >= 1.0:
        return 1
    return max(1, math.ceil(math.log(density) / math.log(1.0 - rate) - 0.25))


def layer_quotas(density: float, sizes: dict[str, int]) -> dict[str, int]:
    """Exactly floor(density * sum(sizes)) weights over layers: floor per layer, largest remainders +1."""
    total = keep_count(density, sum(sizes.values()))
    quotas = {name: keep_count(density, n) for name, n in sizes.items()}
    # Rounded, so that float noise (1 - 0.8 = 0.19999999999999996) cannot reorder equal fractions.
    fractions = {name: round(density * n - quotas[name], 9) for name, n in sizes.items()}
    order = sorted(sizes, key=lambda name: -fractions[name])  # stable: ties keep the layer order
    for name in order[: total - sum(quotas.values())]:
        quotas[name] += 1
    return quotas


def level_dir(ctx: PruneContext, level: int) -> ArtifactDir:
    return ctx.out.child(imp_level(level))


class IMPPruner(Pruner):
    Config = IMPConfig

    def start_epoch(self, ctx: PruneContext) -> int:
        return ctx.cfg.train.rewind_epoch if self.cfg.when == When.rewind else 0

    def select(self, ctx: PruneContext, scores: dict[str, Tensor], kept: Masks, level: int, levels: int) -> Masks:
        """The mask of `level`: the largest scores among the weights `kept` at the level before."""
        rate = self.cfg.rate
        if not self.cfg.layerwise:
            k = ctx.keep if level == levels else keep_count((1.0 - rate) ** level, ctx.total)
            return topk_masks(scores, k, keep_mask=kept)
        sizes = {name: s.numel() for name, s in scores.items()}
        if level == levels:
            quotas = layer_quotas(ctx.density, sizes)
        else:
            quotas = {name: min(n, math.ceil((1.0 - rate) ** level * n - 1e-9)) for name, n in sizes.items()}
        masks: Masks = {}
        for name, s in scores.items():
            masks.update(topk_masks({name: s}, quotas[name], keep_mask={name: kept[name]}))
        return masks

    def train_level(self, ctx: PruneContext, out: ArtifactDir, level: int, masks: Masks) -> float | None:
        """Rewind to the pruning point, apply `masks`, train to the end; resumable under `out`."""
        if ctx.train is None:
            raise RuntimeError("IMP needs a train function in its PruneContext (the search stage provides one)")
        out.start()
        out.save_tensors(MASK, masks)
        model = copy.deepcopy(ctx.model)  # the pruning point: w0 (IMP) or w_k (LTR)
        if level > 0:
            attach_masks(model, masks)
        log.info("%s: level %d, %d of %d weights, epochs %d to %d", self.cfg.label or "imp", level,
                 count(masks)[0], ctx.total, self.start_epoch(ctx), ctx.cfg.train.epochs)
        history = ctx.train(model, stream=f"imp-level-{level}", out=out, start_epoch=self.start_epoch(ctx))
        out.save_tensors(WEIGHTS, plain_state_dict(model))
        acc = history[-1].get("test_acc") if history else None
        out.mark_done(level=level, test_acc=acc)
        # The epoch checkpoints only served resumption; the next levels need weights.pt alone.
        if distributed.is_main():  # the run folder is rank 0's to change
            shutil.rmtree(out.path / CHECKPOINTS, ignore_errors=True)
        return acc

    def train_shared(self, ctx: PruneContext, out: ArtifactDir, level: int, masks: Masks) -> None:
        """Train a level, or copy it from the cache: every level before the last depends only on the
        upstream config, the IMP settings and the level, so runs to different sparsities share them."""
        if ctx.cache is None:
            if not out.done:
                self.train_level(ctx, out, level, masks)
            return
        spec = {**ctx.upstream, "imp": {"when": When(self.cfg.when).value, "rate": self.cfg.rate,
                                        "layerwise": self.cfg.layerwise},
                "level": level, "kept": count(masks)[0]}
        ctx.cache.reuse_or_compute("imp_level", spec, out, lambda: self.train_level(ctx, out, level, masks))

    def prune(self, ctx: PruneContext) -> PruneResult:
        levels = num_levels(ctx.density, self.cfg.rate)
        masks = {name: m.cpu() for name, m in full_masks(ctx.model, ctx.exclude).items()}
        scores: dict[str, Tensor] = {}
        records: list[dict[str, Any]] = []
        for level in range(levels + 1):
            out = level_dir(ctx, level)
            if level > 0 and (level == levels or not out.done):
                trained = level_dir(ctx, level - 1).load_tensors(WEIGHTS)
                scores = {name: trained[name].abs().masked_fill(~masks[name], float("-inf")) for name in masks}
                masks = self.select(ctx, scores, masks, level, levels)
            elif level > 0:
                masks = out.load_tensors(MASK)
            if level == levels:
                out.start()
                out.save_tensors(MASK, masks)
                out.mark_done(level=level, test_acc=None)
                acc = None
            else:
                self.train_shared(ctx, out, level, masks)
                acc = out.info()["test_acc"]
            kept, total = count(masks)
            records.append({"level": level, "density": kept / total, "kept": kept, "total": total, "test_acc": acc})
        ctx.out.save_json(LEVELS, records)
        info = {"levels": records, "rate": self.cfg.rate, "layerwise": self.cfg.layerwise,
                "start_epoch": self.start_epoch(ctx), "num_levels": levels}
        return PruneResult(masks, scores, info)

