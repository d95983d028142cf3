"""Stage `sanity`: does the ticket carry per-weight information? (Frankle et al. 2021; Su et al. 2020)

Each variant below destroys one part of what the method found, is retrained with exactly the ticket's
budget (same start epoch, rewind stage's `ticket.pt["start_epoch"]`, same schedule, same optimizer, and the
same data order: the trainer key "retrain" the ticket used), and its final test accuracy is compared with
the ticket's (the last record of `retrain/metrics.json`).

Variants (k = the number of weights the ticket keeps; per-layer counts are the ticket's):
  shuffle  Layerwise shuffle. In every layer keep as many weights as the ticket keeps there, at positions
           drawn uniformly at random within the layer (seeded); start from the ticket's own starting
           weights (w0, or w_k at the rewind point). Keeps the layerwise densities and the weights, destroys
           which weights were chosen inside each layer.
  invert   Keep the k lowest-scored weights of `search/scores.pt` (global, same k) instead of the k highest;
           ties are broken in favour of weights the ticket pruned, so the variant is disjoint from the
           ticket whenever k <= N - k. Starts from the ticket's starting weights. Skipped when the method
           wrote no scores.
  reinit   The ticket's mask on fresh initial weights (same init scheme, another seed). Only for masks found
           at initialisation (pruner.when=init); for a mask found at the rewind point the weights are part of
           the ticket, so the variant is skipped.
  random   Su et al.'s "random ticket": the ticket's per-layer kept counts at random positions (another
           seeded draw) AND fresh initial weights. Differs from `shuffle` only in the weights: shuffle keeps
           the ticket's starting weights, random starts from a new initialisation.

With `sanity.dense=true` the unpruned network is retrained too, from the same starting weights with the
same budget, in `sanity/dense/`: the reference the run's summary quotes beside the ticket, not a check.

Verdict of one run: a variant passes when margin = ticket_acc - variant_acc > `sanity.margin` (test
accuracy as a fraction; the default 0.005 = 0.5 percentage points). `ltsearch report` combines seeds
(mean and std of the margin, see ltsearch/report.py).

Layout: `sanity/<variant>/` is a child stage per variant (checkpoints while it trains, mask.pt, result.json,
DONE.json), so a killed sanity stage resumes inside the variant it was retraining. `sanity/sanity.json`
holds the verdicts, the rule and the definitions.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

import torch
from rich.table import Table
from torch import Tensor

import ltsearch.distributed as distributed
from ltsearch.config import SanityVariant, Verbosity, When
from ltsearch.context import RunContext
from ltsearch.masking import Masks, count, plain_state_dict
from ltsearch.paths import (
    CHECKPOINTS,
    FINAL,
    MASK,
    METRICS,
    PRUNING_POINT,
    RETRAIN,
    REWIND,
    SANITY_SUMMARY,
    SCORES,
    SEARCH,
    TICKET,
    VARIANT_RESULT,
)
from ltsearch.rundir import ArtifactDir
from ltsearch.seeding import derive_seed, generator
from ltsearch.training.evaluate import evaluate

log = logging.getLogger(__name__)

DENSE = "dense"
DEFINITIONS = {
    "shuffle": "per-layer kept counts of the ticket, positions uniformly random within each layer (seeded); "
               "the ticket's starting weights",
    "invert": "the k lowest scores of search/scores.pt instead of the k highest (same k, global; ties broken "
              "towards weights the ticket pruned); the ticket's starting weights",
    "reinit": "the ticket's mask on fresh initial weights (same init scheme, another seed); masks found at "
              "init only",
    "random": "random ticket (Su et al. 2020): per-layer kept counts of the ticket at random positions AND "
              "fresh initial weights (shuffle keeps the ticket's weights)",
    DENSE: "the reference (sanity.dense=true), not a check: no mask, the ticket's starting weights",
}
BUDGET = ("each variant is retrained from the ticket's start epoch to the end of the same schedule, with the "
          "same optimizer and the same data order as the ticket")


def rule_text(threshold: float) -> str:
    return (f"pass if margin = ticket accuracy - variant accuracy > {threshold:g} "
            f"({100 * threshold:g} percentage points of test accuracy)")


def passes(margin: float, threshold: float) -> bool:
    """The single-run rule: the ticket beats the variant by strictly more than the threshold."""
    return margin > threshold


# -- the variants (pure functions of the ticket, for tests and reuse) ---------------------------------------
def shuffle_masks(masks: Masks, gen: torch.Generator) -> Masks:
    """Same number of kept weights in every layer, positions uniformly at random within the layer."""
    out = {}
    for name, mask in masks.items():
        kept = int(mask.sum())
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[torch.randperm(mask.numel(), generator=gen)[:kept]] = True
        out[name] = flat.view(mask.shape)
    return out


def invert_masks(scores: dict[str, Tensor], masks: Masks) -> Masks:
    """Keep the k lowest scores (k = the ticket's kept count, global), ties broken towards weights the ticket
    pruned: disjoint from the ticket whenever k <= N - k. NaN scores sort last (never preferred)."""
    names = list(masks)
    flat_scores = torch.cat([scores[n].detach().flatten().to(torch.float64).cpu() for n in names])
    in_ticket = torch.cat([masks[n].flatten().cpu() for n in names])
    k = int(in_ticket.sum())
    # Lexicographic order (score ascending, then outside-the-ticket first) by two stable sorts.
    first = torch.argsort(in_ticket.to(torch.int8), stable=True)
    order = first[torch.argsort(flat_scores[first], stable=True)]
    keep = torch.zeros_like(in_ticket)
    keep[order[:k]] = True
    out, offset = {}, 0
    for n in names:
        size = masks[n].numel()
        out[n] = keep[offset: offset + size].view(masks[n].shape)
        offset += size
    return out


def full_masks_like(masks: Masks) -> Masks:
    return {name: torch.ones_like(mask, dtype=torch.bool) for name, mask in masks.items()}


def _weights_with(state: dict[str, Tensor], masks: Masks) -> dict[str, Tensor]:
    return {k: (v * masks[k].to(v.dtype) if k in masks else v).clone() for k, v in state.items()}


def build_variant(ctx: RunContext, variant: str, masks: Masks, start: dict[str, Tensor]
                  ) -> tuple[Masks, dict[str, Tensor], str] | str:
    """(masks, starting weights, description) of a variant, or the reason why it is skipped."""
    seed = ctx.cfg.seed
    kept, total = count(masks)
    if kept == total:
        return "the ticket keeps every weight (dense): there is nothing to perturb"
    if variant == DENSE:
        return full_masks_like(masks), dict(start), DEFINITIONS[variant]
    if variant == SanityVariant.shuffle.value:
        new = shuffle_masks(masks, generator(seed, "sanity", "shuffle"))
        return new, _weights_with(start, new), DEFINITIONS[variant]
    if variant == SanityVariant.invert.value:
        search = ctx.stage_dir(SEARCH)
        if not (search.path / SCORES).exists():
            return f"method {ctx.cfg.pruner.name} wrote no per-weight scores (search/scores.pt)"
        scores = search.load_tensors(SCORES)
        if set(scores) != set(masks) or any(scores[n].shape != masks[n].shape for n in masks):
            return "search/scores.pt does not cover the same weights as the mask"
        new = invert_masks(scores, masks)
        return new, _weights_with(start, new), DEFINITIONS[variant]
    if variant == SanityVariant.reinit.value:
        if ctx.cfg.pruner.when != When.init:
            return ("mask found at the rewind point (pruner.when=rewind): its weights are part of the ticket, "
                    "so reinitialising is not a meaningful check")
        fresh = _fresh_weights(ctx, derive_seed(seed, "sanity", "reinit"))
        return dict(masks), _weights_with(fresh, masks), DEFINITIONS[variant]
    if variant == SanityVariant.random.value:
        new = shuffle_masks(masks, generator(seed, "sanity", "random"))
        fresh = _fresh_weights(ctx, derive_seed(seed, "sanity", "random-init"))
        return new, _weights_with(fresh, new), DEFINITIONS[variant]
    raise ValueError(f"unknown sanity variant {variant!r}")


def _fresh_weights(ctx: RunContext, seed: int) -> dict[str, Tensor]:
    return plain_state_dict(ctx.new_model(seed=seed))


# -- the stage -------------------------------------------------------------------------------------------------
def ticket_accuracy(ctx: RunContext) -> float:
    retrain = ctx.stage_dir(RETRAIN)
    if (retrain.path / METRICS).exists():
        records = [r for r in retrain.load_json(METRICS) if "test_acc" in r]
        if records:
            return float(records[-1]["test_acc"])
    model, _ = ctx.load_network(RETRAIN, FINAL)
    return float(evaluate(model, ctx.data, ctx.runtime, "test", ctx.cfg.train.eval_batch_size)["acc"])


def run_variant(ctx: RunContext, out: ArtifactDir, variant: str, masks: Masks, start_weights: dict[str, Tensor],
                start_epoch: int) -> dict[str, Any]:
    """Retrain one variant under `out` (resumable); return {accuracy, ...} or {skipped_reason}."""
    if out.done:
        return out.load_json(VARIANT_RESULT)
    built = build_variant(ctx, variant, masks, start_weights)
    if isinstance(built, str):
        log.info("sanity %s: skipped: %s", variant, built)
        result: dict[str, Any] = {"variant": variant, "accuracy": None, "skipped_reason": built}
        out.start()
        out.save_json(VARIANT_RESULT, result)
        out.mark_done(skipped=True)
        return result
    vmasks, weights, definition = built
    out.start()
    out.save_tensors(MASK, vmasks)
    model = ctx.model_with(weights, vmasks)
    log.info("sanity %s: retraining from epoch %d (%s)", variant, start_epoch, definition)
    history = ctx.train(model, "retrain", out, start_epoch=start_epoch)
    accuracy = float(history[-1]["test_acc"])
    kept = {n: int(m.sum()) for n, m in vmasks.items()}
    overlap = sum(int((vmasks[n] & masks[n]).sum()) for n in masks)
    result = {"variant": variant, "accuracy": accuracy, "skipped_reason": None, "definition": definition,
              "kept": sum(kept.values()), "overlap_with_ticket": overlap, "start_epoch": start_epoch,
              "epochs": len(history)}
    out.save_json(VARIANT_RESULT, result)
    out.mark_done(accuracy=accuracy)
    # The epoch checkpoints only served resumption; the verdict needs the accuracy alone.
    if distributed.is_main():  # the run folder is rank 0's to change
        shutil.rmtree(out.path / CHECKPOINTS, ignore_errors=True)
    return result


def run(ctx: RunContext, out: ArtifactDir) -> dict[str, Any]:
    ticket = ctx.stage_dir(REWIND).load_tensors(TICKET)
    masks: Masks = {n: m.bool() for n, m in ticket["masks"].items()}
    start_epoch = int(ticket["start_epoch"])
    # The dense weights the ticket starts from (w0, or w_k at the rewind point): a variant that keeps the
    # ticket's weights needs them at positions the ticket pruned too.
    start_weights = ctx.stage_dir(SEARCH).load_tensors(PRUNING_POINT)
    ticket_acc = ticket_accuracy(ctx)
    threshold = float(ctx.cfg.sanity.margin)
    variants: dict[str, Any] = {}
    for variant in [v.value for v in ctx.cfg.sanity.variants]:
        result = run_variant(ctx, out.child(variant), variant, masks, start_weights, start_epoch)
        acc = result.get("accuracy")
        margin = None if acc is None else ticket_acc - acc
        variants[variant] = {
            "accuracy": acc,
            "margin": margin,
            "passed": None if margin is None else passes(margin, threshold),
            "skipped_reason": result.get("skipped_reason"),
            "definition": DEFINITIONS[variant],
            **{k: result[k] for k in ("kept", "overlap_with_ticket") if k in result},
        }
    reference = None
    if ctx.cfg.sanity.dense:
        result = run_variant(ctx, out.child(DENSE), DENSE, masks, start_weights, start_epoch)
        reference = {"accuracy": result.get("accuracy"), "skipped_reason": result.get("skipped_reason"),
                     "definition": DEFINITIONS[DENSE]}
    tested = [v for v in variants.values() if v["passed"] is not None]
    summary = {
        "method": ctx.label or ctx.cfg.pruner.name,
        "seed": ctx.cfg.seed,
        "sparsity": float(ctx.cfg.sparsity),
        "when": ctx.cfg.pruner.when.value,
        "ticket_accuracy": ticket_acc,
        "threshold": threshold,
        "rule": rule_text(threshold),
        "budget": BUDGET,
        "start_epoch": start_epoch,
        "passed_all": bool(tested) and all(v["passed"] for v in tested),
        "variants": variants,
        "dense": reference,
    }
    out.save_json(SANITY_SUMMARY, summary)
    ctx.runtime.show(verdict_table(summary), at=Verbosity.verbose)
    return {"passed_all": summary["passed_all"], "summary": verdict_line(summary)}


def verdict_line(summary: dict[str, Any]) -> str:
    """One line: each variant's margin and verdict (`shuffle +0.0180 pass, reinit skipped, ...`)."""
    parts = [f"{name} skipped" if v["passed"] is None else f"{name} {v['margin']:+.4f} {'pass' if v['passed'] else 'FAIL'}"
             for name, v in summary["variants"].items()]
    dense = (summary.get("dense") or {}).get("accuracy")
    if dense is not None:
        parts.append(f"dense {dense:.4f} (reference)")
    return ", ".join(parts) or "no variant"


def verdict_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"sanity checks: {summary['method']} at sparsity {summary['sparsity']}, "
                        f"ticket accuracy {summary['ticket_accuracy']:.4f}")
    for column in ("variant", "accuracy", "margin", "verdict"):
        table.add_column(column)
    for name, v in summary["variants"].items():
        if v["passed"] is None:
            table.add_row(name, "-", "-", f"skipped: {v['skipped_reason']}")
        else:
            table.add_row(name, f"{v['accuracy']:.4f}", f"{v['margin']:+.4f}", "pass" if v["passed"] else "FAIL")
    dense = summary.get("dense") or {}
    if dense.get("accuracy") is not None:
        table.add_row(DENSE, f"{dense['accuracy']:.4f}", "-", "reference (no mask)")
    table.caption = summary["rule"]
    return table
