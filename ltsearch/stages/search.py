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
from ltsearch.context import RunContext
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
from ltsearch.objectives import evaluate_logits
from ltsearch.paths import DENSITY, MASK, METRICS, PRETRAIN, PRUNING_POINT, SCORES, WEIGHTS
from ltsearch.rundir import ArtifactDir
from ltsearch.training.evaluate import evaluate, predict

log = logging.getLogger(__name__)
OBJECTIVE_SAMPLES = 4096  # training samples on which the pruning-point objective is measured


def pruning_point(ctx: RunContext, out: ArtifactDir) -> nn.Module:
    """The dense network at the pruning point: w0, or w0 trained for `rewind_epoch` epochs (resumable,
    and shared through the cache by every run with the same upstream config)."""
    model = ctx.new_model()
    if ctx.pruning_epoch == 0:
        return model
    pre = out.child(PRETRAIN)

    def pretrain() -> None:
        pre.start()
        log.info("search: dense training to the rewind point (epoch %d)", ctx.pruning_epoch)
        ctx.train(model, "dense", pre, start_epoch=0, end_epoch=ctx.pruning_epoch)
        pre.save_tensors(WEIGHTS, plain_state_dict(model))
        pre.mark_done(epochs=ctx.pruning_epoch)

    ctx.cache.reuse_or_compute("pretrain", {**ctx.upstream_spec(), "epochs": ctx.pruning_epoch}, pre, pretrain)
    load_plain_state_dict(model, pre.load_tensors(WEIGHTS))
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
def preservation(ctx: RunContext, out: ArtifactDir, model: nn.Module, masks: Masks) -> dict[str, Any]:
    """How much of the dense function the hard mask keeps at the pruning point, before any retraining:
    every objective (task, forward/reverse KL against the unmasked network) on a fixed training subset,
    and test accuracy. BatchNorm runs on batch statistics, as in the CTS search."""
    x_all, targets = ctx.data.sample(OBJECTIVE_SAMPLES, ctx.cfg.seed, "objective", device=ctx.runtime.device)
    batches = x_all.split(ctx.cfg.train.batch_size)
    with batch_statistics(model):
        teacher = predict(model, batches, ctx.runtime.autocast)
        attach_masks(model, masks)
        student = predict(model, batches, ctx.runtime.autocast)
    values = evaluate_logits(student, teacher, targets, ctx.cfg.objective.temperature)
    test = evaluate(model, ctx.data, ctx.runtime, "test", ctx.cfg.train.eval_batch_size, batch_stats=True)
    out.count("forward", 2 * int(targets.numel()) + ctx.data.test_size)
    return {"objective": values, "train_subset_acc": float((student.argmax(1) == targets).float().mean()),
            "test_acc": test["acc"], "samples": int(targets.numel()), "batchnorm": "batch statistics"}


def check_prunable(ctx: RunContext) -> None:
    """Before any training: `model.exclude` must leave some weight to prune."""
    model = ctx.new_model()
    if not prunable_modules(model, ctx.cfg.model.exclude):
        every = [n for n, _ in prunable_modules(model).items()]
        raise ConfigError(f"model.exclude={list(ctx.cfg.model.exclude)} excludes every prunable weight of model "
                          f"'{ctx.cfg.model.name}' ({', '.join(every[:4])}{', ...' if len(every) > 4 else ''}), so "
                          f"nothing is left to prune; exclude fewer layers")


def run(ctx: RunContext, out: ArtifactDir) -> dict[str, Any]:
    check_prunable(ctx)
    model = pruning_point(ctx, out)
    out.save_tensors(PRUNING_POINT, plain_state_dict(model))
    pctx = ctx.prune_context(model, out)
    log.info("search: %s keeps %d of %d prunable weights (density %.5f)", ctx.label or ctx.cfg.pruner.name,
             pctx.keep, pctx.total, ctx.target_density)
    result = ctx.pruner.prune(pctx)
    masks = {name: m.bool().cpu() for name, m in result.masks.items()}
    check_masks(ctx, model, masks)
    out.save_tensors(MASK, masks)
    if result.scores is not None:
        out.save_tensors(SCORES, {name: s.float().cpu() for name, s in result.scores.items()})
    report = density_report(masks)
    out.save_json(DENSITY, report)
    check_collapse(ctx, report)
    fresh = ctx.model_with(out.load_tensors(PRUNING_POINT))
    kept = preservation(ctx, out, fresh, masks)
    out.save_json(METRICS, {"pruner": result.info, "pruning_point": kept})
    return {"kept": report["kept"], "total": report["total"],
            "summary": f"{ctx.label or ctx.cfg.pruner.name}: {report['kept']} of {report['total']} weights kept, "
                       f"test accuracy before retraining {kept['test_acc']:.4f}"}
