"""Stage `evaluate`: results.json, the one record a report reads, and the compact ticket file beside it.

Test accuracy and loss of the final network (the retrained ticket, or the untrained ticket when retrain
did not run), target versus measured density counted from the effective weights the forward pass uses,
per-layer densities, parameter counts, wall time of every stage and the resolved config. ticket.safetensors
holds the evaluated network (`ltsearch.ticketfile`: packed masks, kept values; a few percent of the dense
size at high sparsity) with the accuracy measured here; results.json records its size.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.table import Table

import ltsearch.ticketfile as ticketfile
from ltsearch.config import BNStats, config_container
from ltsearch.context import RunContext
from ltsearch.cost import cost_summary, flops_per_sample
from ltsearch.masking import effective_density_report, keep_count, masks_of, plain_state_dict
from ltsearch.paths import (
    EVALUATE,
    FINAL,
    METRICS,
    RESULTS,
    RETRAIN,
    REWIND,
    SANITY,
    SANITY_SUMMARY,
    SEARCH,
    TICKET,
    TICKET_FILE,
)
from ltsearch.rundir import ArtifactDir, read_record
from ltsearch.runtime import duration
from ltsearch.stages.sanity import verdict_line
from ltsearch.training.evaluate import evaluate

log = logging.getLogger(__name__)


def run(ctx: RunContext, out: ArtifactDir) -> dict[str, Any]:
    source = RETRAIN if ctx.stage_dir(RETRAIN).done else REWIND
    model, _ = ctx.load_network(source, FINAL if source == RETRAIN else TICKET)
    test = evaluate(model, ctx.data, ctx.runtime, "test", ctx.cfg.train.eval_batch_size)
    out.count("forward", ctx.data.test_size)
    ticket_file = _write_ticket_file(ctx, out, model, "trained" if source == RETRAIN else "ticket", test["acc"])
    measured = effective_density_report(model, ctx.cfg.model.exclude)
    search = ctx.stage_dir(SEARCH)
    sanity = ctx.stage_dir(SANITY)
    total_params = sum(p.numel() for p in model.parameters())
    done = {s: ctx.stage_dir(s).info() for s in ctx.stage_names if ctx.stage_dir(s).done}
    # "ticket": the cost of finding and training the ticket (every stage but the sanity checks); "total": all
    ticket_stages = tuple(s for s in ctx.stage_names if s != SANITY)
    elapsed = out.elapsed()  # this stage's time up to the record (writing it is not counted)
    stages = {**done, EVALUATE: {"wall_time": elapsed, "compute": dict(out.compute)}}
    times = {s: info["wall_time"] for s, info in stages.items()}
    cost = cost_summary(ctx.run_dir, stages, flops_per_sample(ctx.new_model(), ctx.data.input_shape,
                                                             ctx.runtime.device),
                        ctx.data.train_size, ticket_stages)
    results = {
        "label": ctx.label or ctx.cfg.pruner.name,
        "pruner": ctx.cfg.pruner.name,
        "seed": ctx.cfg.seed,
        "sparsity": float(ctx.cfg.sparsity),
        "weights": source,
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        # with model.bn_stats=batch the test accuracy depends on the batches it is measured in
        "evaluation": {"batch_size": ctx.cfg.train.eval_batch_size,
                       "batchnorm": BNStats(ctx.cfg.model.bn_stats).value},
        "density": {
            "target": ctx.target_density,
            "target_kept": keep_count(ctx.target_density, measured["total"]),
            "measured": measured["density"],
            "measured_kept": measured["kept"],
            "prunable": measured["total"],
        },
        "layers": {name: {"density": v["density"], "kept": v["kept"], "total": v["total"]}
                   for name, v in measured["layers"].items()},
        "collapsed_layers": measured["collapsed_layers"],
        "parameters": {"total": total_params, "prunable": measured["total"],
                       "nonzero_prunable": measured["kept"],
                       "unprunable": total_params - measured["total"]},
        "pruning_point": search.load_json(METRICS) if search.done else None,
        "wall_time": {**times, "ticket": sum(t for s, t in times.items() if s in ticket_stages),
                      "total": sum(times.values())},
        "sanity": sanity.load_json(SANITY_SUMMARY) if sanity.done else None,
        "cost": cost,
        "ticket_file": ticket_file,
        "config": config_container(ctx.cfg),
    }
    out.save_json(RESULTS, results)
    return {"test_acc": test["acc"], "summary": f"test accuracy {test['acc']:.4f}"}


def _write_ticket_file(ctx: RunContext, out: ArtifactDir, model: Any, weights: str, acc: float) -> dict[str, Any]:
    """evaluate/ticket.safetensors: the evaluated network with its header (the run's recorded config)."""
    data = ctx.data
    meta = ticketfile.run_meta(read_record(ctx.run_dir)["config"], weights=weights, label=ctx.label or
                               ctx.cfg.pruner.name, input_shape=data.input_shape, num_classes=data.num_classes,
                               mean=ticketfile.floats(data.mean), std=ticketfile.floats(data.std), test_acc=acc)
    state = plain_state_dict(model)
    content = ticketfile.encode(state, masks_of(model), meta)
    out.save_bytes(TICKET_FILE, content)
    return {"file": TICKET_FILE, "bytes": len(content), "dense_bytes": ticketfile.dense_bytes(state),
            "weights": weights}


def _seconds(times: dict[str, float]) -> str:
    return ", ".join(f"{stage} {duration(seconds)}" for stage, seconds in times.items())


def summary_table(results: dict[str, Any]) -> Table:
    """The closing summary: accuracy, density, sanity verdicts, and time and compute per stage with totals
    that add up (the ticket's cost, then the sanity checks, then everything)."""
    density = results["density"]
    table = Table(title=f"ltsearch: {results['label']} at sparsity {results['sparsity']}", show_header=False)
    table.add_row("in one line", comparison_line(results))
    table.add_row("test accuracy", f"{results['test_acc']:.4f}  (loss {results['test_loss']:.4f}, "
                                   f"weights after {results['weights']})")
    pp = results.get("pruning_point") or {}
    if pp.get("pruning_point"):
        before = pp["pruning_point"]
        table.add_row("before retraining", f"test acc {before['test_acc']:.4f}, "
                                           f"reverse KL {before['objective']['reverse_kl']:.4f}")
    table.add_row("density", f"target {density['target']:.6f} ({density['target_kept']} weights), "
                              f"measured {density['measured']:.6f} ({density['measured_kept']} of "
                              f"{density['prunable']})")
    if results["collapsed_layers"]:
        table.add_row("layer collapse", ", ".join(results["collapsed_layers"]))
    sanity = results.get("sanity")
    if sanity:
        table.add_row("sanity checks", verdict_line(sanity))
    times = {k: v for k, v in results["wall_time"].items() if k not in ("ticket", "total")}
    ticket = {k: v for k, v in times.items() if k != SANITY}
    line = f"{_seconds(ticket)}: {duration(results['wall_time']['ticket'])} for the ticket"
    if SANITY in times:
        line += f"; sanity {duration(times[SANITY])}; total {duration(results['wall_time']['total'])}"
    table.add_row("wall time", line)
    cost = results.get("cost")
    if cost:
        table.add_row("compute", _compute_line(cost))
    return table


def _percent(fraction: float) -> str:
    """A kept fraction as a percentage to two significant digits (1.0%, 0.74%, 10%)."""
    value = 100 * fraction
    if value >= 10:
        return f"{value:.0f}%"
    return f"{value:.1f}%" if value >= 0.995 else f"{value:.2g}%"


def comparison_line(results: dict[str, Any]) -> str:
    """What the run shows, in one line: the ticket's accuracy beside a random mask with the ticket's layer
    sizes (the sanity stage's `random`, else `shuffle`) and the dense network (`sanity.dense`), where the run
    measured them. Weights that `model.exclude` keeps out of pruning are named, so that "1%" is read as a
    share of the prunable weights."""
    density = results["density"]
    kept = density["measured_kept"] / density["prunable"] if density["prunable"] else 1.0
    excluded = ((results.get("config") or {}).get("model") or {}).get("exclude") or []
    share = f"the prunable weights (all but {', '.join(excluded)})" if excluded else "the weights"
    parts = [f"keeps {_percent(kept)} of {share}: {100 * results['test_acc']:.1f}%"]
    sanity = results.get("sanity") or {}
    variants = sanity.get("variants") or {}
    for name, words in (("random", "a random mask with the same layer sizes"),
                        ("shuffle", "the same layer sizes, shuffled")):
        accuracy = (variants.get(name) or {}).get("accuracy")
        if accuracy is not None:
            parts.append(f"{words}: {100 * accuracy:.1f}%")
            break
    dense = (sanity.get("dense") or {}).get("accuracy")
    if dense is not None:
        parts.append(f"dense: {100 * dense:.1f}%")
    return "; ".join(parts)


def _compute_line(cost: dict[str, Any]) -> str:
    """Dense training epochs: the ticket's, the sanity checks', the total; then with reused work."""
    line = f"{cost['ticket']['epochs']:.2f} dense training epochs for the ticket"
    sanity = cost["stages"].get(SANITY)
    if sanity is not None:
        line += f" + {sanity['epochs']:.2f} for the sanity checks = {cost['total']['epochs']:.2f}"
    line += f" ({cost['total']['flops'] / 1e12:.3g} TFLOP)"
    if cost["reused"]:
        line += (f"; the ticket {cost['ticket_with_reused']['epochs']:.2f} including work reused from the cache "
                 f"({', '.join(r['stage'] for r in cost['reused'])})")
    return line
