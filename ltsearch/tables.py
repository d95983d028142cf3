"""The report's tables as rich `Table`s (printed to the console and saved as text by `ltsearch.report`),
and the names they give models."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich.table import Table

from ltsearch.config import Shortcut


def model_label(model: dict[str, Any]) -> str:
    """The name reports give a model config: the builder name plus what tells its variants apart
    (resnet_cifar20 and resnet_cifar32, mlp-300-100 and mlp-256-256, "w16" for a set width, and a
    non-default ResNet shortcut)."""
    name = str(model.get("name") or "?")
    depth, width, hidden = model.get("depth") or 0, model.get("width") or 0, model.get("hidden") or []
    label = f"{name}{depth}" if depth else name
    if hidden:
        label += "-" + "-".join(str(h) for h in hidden)
    if width:
        label += f" w{width}"
    shortcut = model.get("shortcut")
    if name.startswith("resnet") and shortcut not in (None, Shortcut.conv1x1, Shortcut.conv1x1.value):
        label += f" {getattr(shortcut, 'value', shortcut)} shortcuts"
    return label



def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _pm(mean: Any, std: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _several(df: pd.DataFrame, column: str) -> bool:
    return column in df and df[column].nunique(dropna=True) > 1


def summary_table(summary: pd.DataFrame, stage_order: tuple[str, ...]) -> Table:
    table = Table(title="accuracy by method and sparsity (mean ± std over seeds)")
    extra = [c for c in ("dataset", "model") if _several(summary, c)]
    stages = [s for s in stage_order if summary.get(f"time_{s}_s", pd.Series(dtype=float)).notna().any()]
    for column in [*extra, "method", "sparsity", "density", "seeds", "test acc", "acc before retrain",
                   "measured density", *[f"{s} s" for s in stages], "total s", "cost (epochs)", "failed",
                   "unfinished"]:
        table.add_column(column, overflow="fold")
    for _, r in summary.iterrows():
        table.add_row(*[str(r[c]) for c in extra], str(r["method"]), f"{r['sparsity']:g}", f"{r['density']:.5g}",
                      f"{r['n_done']} ({r['seeds']})" if r["seeds"] else "0",
                      _pm(r["test_acc_mean"], r["test_acc_std"]),
                      _pm(r["acc_before_retrain_mean"], r["acc_before_retrain_std"]),
                      _fmt(r["measured_density"], 6), *[_fmt(r[f"time_{s}_s"], 1) for s in stages],
                      _fmt(r["total_time_s"], 1), _fmt(r.get("cost_epochs"), 1), str(r["n_failed"] or ""),
                      str(r["n_unfinished"] or ""))
    table.caption = ("total s = mean wall time of one run without the sanity checks; cost = its compute in "
                     "training epochs of the dense model (FLOPs), including upstream work reused from the cache")
    return table


def sanity_table(sanity: pd.DataFrame, rule: str) -> Table:
    table = Table(title="sanity checks: margin of the ticket over each variant (mean ± std over seeds)")
    extra = [c for c in ("dataset", "model") if _several(sanity, c)]
    for column in [*extra, "method", "sparsity", "variant", "seeds", "ticket acc", "variant acc", "margin",
                   "bound", "verdict"]:
        table.add_column(column, overflow="fold")
    for _, r in sanity.iterrows():
        if r["verdict"] == "skipped":
            tail = ["-", "-", "-", "-", f"skipped: {r['skipped_reason']}"]
        else:
            verdict = "[green]pass[/]" if r["verdict"] == "pass" else "[red]FAIL[/]"
            tail = [_fmt(r["ticket_acc_mean"]), _fmt(r["variant_acc_mean"]), _pm(r["margin_mean"], r["margin_std"]),
                    _fmt(r["bound"]), f"{verdict} ({r['seeds_passed']} seeds)"]
        table.add_row(*[str(r[c]) for c in extra], str(r["method"]), f"{r['sparsity']:g}", str(r["variant"]),
                      str(r["n"]), *tail)
    table.caption = rule
    return table


def runs_table(runs: pd.DataFrame, title: str) -> Table:
    table = Table(title=title)
    columns = [c for c in ("method", "model", "dataset", "sparsity", "seed", "status", "test_acc",
                           "acc_before_retrain", "measured_density", "total_time", "failed_stage", "error", "run")
               if c in runs]
    for column in columns:
        table.add_column(column, overflow="fold")
    for _, row in runs.iterrows():
        table.add_row(*[_fmt(row.get(c)) for c in columns])
    return table
