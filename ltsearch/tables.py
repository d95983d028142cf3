"""The report's tables as rich `Table`s (printed to the console and saved as text by `ltsearch.report`),
and the names they give models."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from ltsearch.config import Head, Shortcut

# builder name -> (the name papers use, the builder's default width)
PAPER_NAMES = {"resnet_cifar": ("ResNet-{depth}", 16), "resnet18": ("ResNet-18", 64), "vgg": ("VGG-{depth}", 0),
               "conv2": ("Conv-2", 0), "conv4": ("Conv-4", 0), "conv6": ("Conv-6", 0), "cnn1d": ("CNN-1D", 32)}
DATASET_NAMES = {"mnist1d": "MNIST-1D", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                 "cifar100": "CIFAR-100", "fake": "synthetic"}


def model_label(model: dict[str, Any]) -> str:
    """The name reports and plots give a model config: the name papers use (ResNet-20, LeNet-300-100, VGG-16,
    Conv-2), plus what tells variants of one builder apart (a non-default width, the ResNet shortcut, CNN-1D's
    flatten head); a `model=custom` network is named by its constructor (resnet18 (torchvision))."""
    name = str(model.get("name") or "?")
    depth, width, hidden = model.get("depth") or 0, model.get("width") or 0, model.get("hidden") or []
    if name == "custom":
        target = str(model.get("_target_") or "?")
        return f"{target.rsplit('.', 1)[-1]} ({target.split('.', 1)[0]})" if "." in target else target
    if name == "mlp":
        sizes = "-".join(str(h) for h in hidden)
        return f"LeNet-{sizes}" if list(hidden) == [300, 100] else f"MLP-{sizes}"
    pattern, default_width = PAPER_NAMES.get(name, (f"{name}{depth}" if depth else name, 0))
    label = pattern.format(depth=depth)
    if width and width != default_width:
        label += f" w{width}"
    shortcut = model.get("shortcut")
    if name.startswith("resnet") and shortcut not in (None, Shortcut.conv1x1, Shortcut.conv1x1.value):
        label += f" {getattr(shortcut, 'value', shortcut)} shortcuts"
    if name == "cnn1d" and Head(model.get("head") or Head.flatten) == Head.flatten:  # (no key: recorded before it)
        label += " flatten head"
    return label


def dataset_label(dataset: dict[str, Any] | str) -> str:
    """The name papers use (CIFAR-10, MNIST-1D); an image folder is named by its folder or archive."""
    if isinstance(dataset, str):
        return DATASET_NAMES.get(dataset, dataset)
    name = str(dataset.get("name") or "?")
    if name == "imagefolder" and dataset.get("root"):
        folder = str(dataset["root"]).rstrip("/").rsplit("/", 1)[-1]
        return folder.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz")
    return DATASET_NAMES.get(name, name)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _pm(mean: Any, std: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f}±{std:.4f}"


def _several(df: pd.DataFrame, column: str) -> bool:
    return column in df and df[column].nunique(dropna=True) > 1


def compact_table(title: str, columns: list[str], right: tuple[str, ...] = (), wrap: tuple[str, ...] = ()) -> Table:
    """A compact table (a rule under the header, no vertical lines) whose rows stay one line at 100 columns;
    on a narrower terminal the text columns in `wrap` fold first, then the others (never cropped)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True,
                  title_justify="left", caption_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold",
                         min_width=None if column in wrap else len(column))
    return table


def _seeds(row: pd.Series) -> str:
    return f"{row['n_done']} ({row['seeds']})" if row["seeds"] else "0"


def _missing(row: pd.Series) -> str:
    parts = [f"{int(row[k])} {word}" for k, word in (("n_failed", "failed"), ("n_unfinished", "unfinished"))
             if row.get(k)]
    return ", ".join(parts)


def file_size(nbytes: Any, dense: Any) -> str:
    """A ticket file's size and its share of the dense state_dict: `45.2K 4.2%`."""
    if nbytes is None or (isinstance(nbytes, float) and math.isnan(nbytes)):
        return "-"
    scaled, unit = float(nbytes), ""
    for unit in ("", "K", "M", "G"):
        if scaled < 1000 or unit == "G":
            break
        scaled /= 1000
    text = f"{scaled:.0f}" if not unit else f"{scaled:.1f}{unit}"
    if dense is not None and not (isinstance(dense, float) and math.isnan(dense)) and dense:
        text += f" {100 * float(nbytes) / float(dense):.1f}%"
    return text


def summary_table(summary: pd.DataFrame) -> Table:
    """Accuracy by method and sparsity: mean ± std over seeds, before and after retraining; the size of the
    ticket file when the runs wrote one."""
    extra = [c for c in ("dataset", "model") if _several(summary, c)]
    missing = any(_missing(r) for _, r in summary.iterrows())
    files = "ticket_file_bytes" in summary and summary["ticket_file_bytes"].notna().any()
    table = compact_table("accuracy by method and sparsity (mean ± std over seeds)",
                   [*extra, "method", "sparsity", "seeds", "test acc", "before retrain", "density",
                    *(["file"] if files else []), *(["not done"] if missing else [])],
                   right=("sparsity", "density", "file"), wrap=("method", "model", "not done"))
    for _, r in summary.iterrows():
        table.add_row(*[str(r[c]) for c in extra], str(r["method"]), f"{r['sparsity']:g}", _seeds(r),
                      _pm(r["test_acc_mean"], r["test_acc_std"]),
                      _pm(r["acc_before_retrain_mean"], r["acc_before_retrain_std"]),
                      _fmt(r["measured_density"], 6),
                      *([file_size(r["ticket_file_bytes"], r["dense_bytes"])] if files else []),
                      *([_missing(r)] if missing else []))
    table.caption = "density: measured from the weights the forward pass uses (mean over seeds)"
    if files:
        table.caption += "; file: evaluate/ticket.safetensors, bytes and share of the dense state_dict"
    return table


def cost_table(summary: pd.DataFrame, stage_order: tuple[str, ...], sanity: str) -> Table:
    """Mean wall time per stage of one run, the ticket's time and compute, and the total."""
    extra = [c for c in ("dataset", "model") if _several(summary, c)]
    stages = [s for s in stage_order if summary.get(f"time_{s}_s", pd.Series(dtype=float)).notna().any()]
    table = compact_table("time and compute of one run (mean over seeds)",
                   [*extra, "method", "sparsity", *stages, "ticket", "total", "epochs"],
                   right=("sparsity", *stages, "ticket", "total", "epochs"), wrap=("method", "model"))
    for _, r in summary.iterrows():
        known = [v for s in stages if not math.isnan(v := r[f"time_{s}_s"])]
        total = sum(known) if known else float("nan")
        table.add_row(*[str(r[c]) for c in extra], str(r["method"]), f"{r['sparsity']:g}",
                      *[_fmt(r[f"time_{s}_s"], 1) for s in stages], _fmt(r["total_time_s"], 1),
                      _fmt(total, 1), _fmt(r.get("cost_epochs"), 1))
    table.caption = (f"seconds per stage; ticket = every stage but {sanity} (finding and training the ticket), "
                     f"total = every stage; epochs = the ticket's compute in training epochs of the dense model, "
                     f"including upstream work reused from the cache")
    return table


def sanity_table(sanity: pd.DataFrame, rule: str) -> Table:
    extra = [c for c in ("dataset", "model") if _several(sanity, c)]
    table = compact_table("sanity checks: margin of the ticket over each variant (mean ± std over seeds)",
                   [*extra, "method", "sparsity", "variant", "seeds", "ticket", "variant acc", "margin", "bound",
                    "verdict"], right=("sparsity",), wrap=("method", "model"))
    reasons: dict[str, set[str]] = {}
    for _, r in sanity.iterrows():
        if r["verdict"] == "skipped":
            reasons.setdefault(str(r["variant"]), set()).add(str(r["skipped_reason"]))
            tail = ["-", "-", "-", "-", "skipped"]
        else:
            verdict = "[green]pass[/]" if r["verdict"] == "pass" else "[red]FAIL[/]"
            tail = [_fmt(r["ticket_acc_mean"]), _fmt(r["variant_acc_mean"]), _pm(r["margin_mean"], r["margin_std"]),
                    _fmt(r["bound"]), f"{verdict} ({r['seeds_passed']})"]
        table.add_row(*[str(r[c]) for c in extra], str(r["method"]), f"{r['sparsity']:g}", str(r["variant"]),
                      str(r["n"]), *tail)
    skipped = [f"{variant} skipped: {'; '.join(sorted(why))}" for variant, why in reasons.items()]
    table.caption = "\n".join([rule, *skipped])
    return table


def pending_lines(runs: pd.DataFrame, root: Path | None = None) -> list[str]:
    """The runs not done, one line each: status (and failed stage), folder (relative to `root`), error."""
    lines = []
    for _, row in runs.iterrows():
        status = str(row["status"])
        stage = row.get("failed_stage")
        if status == "failed" and isinstance(stage, str):
            status += f" in {stage}"
        folder = _relative(Path(str(row["run"])), root) if root is not None else str(row["run"])
        error = row.get("error")
        lines.append(f"  {status}: {folder}" + (f": {error}" if isinstance(error, str) else ""))
    return lines


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve())) or "."
    except ValueError:
        return str(path)


# -- a whole report ------------------------------------------------------------------------------------------
WIDTH = 100  # the tables are laid out to stay readable at this width (and are saved at it)


def report_renderables(runs: pd.DataFrame, summary: pd.DataFrame, sanity: pd.DataFrame,
                       stage_order: tuple[str, ...], rule: str, root: Path | None = None) -> list[Any]:
    """What a report prints: a count of the runs, the accuracy, cost and sanity tables, the runs not done."""
    counts = runs["status"].value_counts() if not runs.empty else pd.Series(dtype=int)
    parts = [f"{n} {status}" for status in ("done", "failed", "unfinished", "running") if (n := counts.get(status))]
    out: list[Any] = [f"{len(runs)} run(s): {', '.join(parts) or 'none'}"]
    if not summary.empty:
        out += [summary_table(summary), cost_table(summary, stage_order, "sanity")]
    if not sanity.empty:
        out.append(sanity_table(sanity, rule))
    pending = runs[runs["status"] != "done"] if not runs.empty else runs
    if not pending.empty:
        out += ["", f"{len(pending)} run(s) not done:", *pending_lines(pending, root)]
    return out


def render_text(renderables: list[Any], width: int = WIDTH) -> str:
    buffer = io.StringIO()
    con = Console(file=buffer, width=width, no_color=True, color_system=None)
    for renderable in spaced(renderables):
        con.print(renderable, soft_wrap=isinstance(renderable, str))
    return buffer.getvalue()


def spaced(renderables: list[Any]) -> list[Any]:
    """A blank line before every table."""
    return [part for r in renderables for part in ((["", r]) if isinstance(r, Table) else [r])]
