"""Stage `search`: reach the pruning point, run the pruner, save the mask as a first-class artifact.

Writes: pruning_point.pt (dense weights where the mask was found: w0, or w_k after `train.rewind_epoch`
epochs of dense training, kept in `pretrain/`), mask.pt (name -> bool tensor), scores.pt when the
method has per-weight scores or logits, density.json (per-layer report), metrics.json (the method's own
numbers, and how well the hard mask preserves the dense network at the pruning point).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ltsearch.config import LayerCollapse
from ltsearch.errors import ConfigError
from ltsearch.masking import (
    Masks,
    attach_masks,
    batch_statistics,
    count,
    density_report,
    keep_count,
    load_plain_state_dict,
    plain_state_dict,
    prunable_modules,
)
from ltsearch.objectives import NAMES as OBJECTIVES
from ltsearch.objectives import objective
from ltsearch.pipeline import RunContext
from ltsearch.pruners import PruneContext
from ltsearch.rundir import StageDir

log = logging.getLogger(__name__)
REQUIRES: tuple[str, ...] = ()
OBJECTIVE_SAMPLES = 4096  # training samples on which the pruning-point objective is measured


def pruning_point(ctx: RunContext, out: StageDir) -> nn.Module:
    """The dense network at the pruning point: w0, or w0 trained for `rewind_epoch` epochs (resumable,
    and shared through the cache by every run with the same upstream config)."""
    model = ctx.new_model()
    if ctx.pruning_epoch == 0:
        return model
    pre = out.child("pretrain")

    def pretrain() -> None:
        pre.start()
        log.info("search: dense training to the rewind point (epoch %d)", ctx.pruning_epoch)
        ctx.train(model, "dense", pre, start_epoch=0, end_epoch=ctx.pruning_epoch)
        pre.save_tensors("weights.pt", plain_state_dict(model))
        pre.mark_done(epochs=ctx.pruning_epoch)

    ctx.cache.stage("pretrain", {**ctx.upstream_spec(), "epochs": ctx.pruning_epoch}, pre, pretrain)
    load_plain_state_dict(model, pre.load_tensors("weights.pt"))
    return model


def check_masks(ctx: RunContext, model: nn.Module, masks: Masks) -> None:
    """A pruner's masks must cover exactly the prunable weights and keep exactly k of them."""
    expected = prunable_modules(model, ctx.cfg.model.exclude)
    if set(masks) != set(expected):
        raise RuntimeError(f"pruner {ctx.cfg.pruner.name} returned masks for {sorted(masks)}, "
                           f"expected {sorted(expected)}")
    kept, total = count(masks)
    if not ctx.pruner.ignores_sparsity and kept != keep_count(ctx.target_density, total):
        raise RuntimeError(f"pruner {ctx.cfg.pruner.name} kept {kept} weights, expected exactly "
                           f"{keep_count(ctx.target_density, total)} of {total}")


def check_collapse(ctx: RunContext, report: dict[str, Any]) -> None:
    """A layer with no weight left cuts the network; warn, or stop (layer_collapse=error), naming the layers."""
    collapsed = report["collapsed_layers"]
    if not collapsed:
        return
    layers = ", ".join(collapsed)
    if ctx.cfg.layer_collapse == LayerCollapse.error:
        raise ConfigError(
            f"layer collapse: at sparsity {ctx.cfg.sparsity} the {ctx.label or ctx.cfg.pruner.name} mask leaves no "
            f"weight in {layers}, which cuts the network; use a lower sparsity or exclude the layer from pruning "
            f"(model.exclude=[{','.join(collapsed)}]) in a new run, or accept it (resume with layer_collapse=warn)")
    log.warning("search: layer collapse: no weight left in %s (layer_collapse=error stops here instead)", layers)


@torch.no_grad()
def preservation(ctx: RunContext, out: StageDir, model: nn.Module, masks: Masks) -> dict[str, Any]:
    """How much of the dense function the hard mask keeps at the pruning point, before any retraining:
    every objective (task, forward/reverse KL against the unmasked network) on a fixed training subset,
    and test accuracy. BatchNorm runs on batch statistics, as in the CTS search."""
    dense_logits, masked_logits, targets = [], [], []
    x_all, y_all = ctx.data.sample(OBJECTIVE_SAMPLES, ctx.cfg.seed, "objective", device=ctx.runtime.device)
    batch = ctx.cfg.train.batch_size
    with batch_statistics(model):
        for start in range(0, y_all.numel(), batch):
            with ctx.runtime.autocast():
                dense_logits.append(model(x_all[start: start + batch]).float())
        attach_masks(model, masks)
        for start in range(0, y_all.numel(), batch):
            with ctx.runtime.autocast():
                masked_logits.append(model(x_all[start: start + batch]).float())
        targets = y_all
        student, teacher = torch.cat(masked_logits), torch.cat(dense_logits)
        values = {name: float(objective(name, student, teacher, targets, ctx.cfg.objective.temperature))
                  for name in OBJECTIVES}
        correct = total = 0
        for x, y in ctx.data.eval_batches("test", ctx.cfg.train.eval_batch_size, ctx.runtime.device):
            with ctx.runtime.autocast():
                correct += int((model(x).argmax(1) == y).sum())
            total += y.numel()
    out.count("forward", 2 * int(targets.numel()) + total)
    return {"objective": values, "train_subset_acc": float((student.argmax(1) == targets).float().mean()),
            "test_acc": correct / total, "samples": int(targets.numel()), "batchnorm": "batch statistics"}


def run(ctx: RunContext, out: StageDir) -> dict[str, Any]:
    model = pruning_point(ctx, out)
    out.save_tensors("pruning_point.pt", plain_state_dict(model))
    pctx = PruneContext(model=model, data=ctx.data, cfg=ctx.cfg, runtime=ctx.runtime, out=out,
                        seed=ctx.cfg.seed, density=ctx.target_density, trainer=ctx.train, cache=ctx.cache,
                        upstream=ctx.upstream_spec())
    log.info("search: %s keeps %d of %d prunable weights (density %.5f)", ctx.label or ctx.cfg.pruner.name,
             pctx.keep, pctx.total, ctx.target_density)
    result = ctx.pruner.prune(pctx)
    masks = {name: m.bool().cpu() for name, m in result.masks.items()}
    check_masks(ctx, model, masks)
    out.save_tensors("mask.pt", masks)
    if result.scores is not None:
        out.save_tensors("scores.pt", {name: s.float().cpu() for name, s in result.scores.items()})
    report = density_report(masks)
    out.save_json("density.json", report)
    check_collapse(ctx, report)
    fresh = ctx.new_model()
    load_plain_state_dict(fresh, out.load_tensors("pruning_point.pt"))
    out.save_json("metrics.json", {"pruner": result.info, "pruning_point": preservation(ctx, out, fresh, masks)})
    return {"kept": report["kept"], "total": report["total"]}
