"""`ltsearch report DIR...`: tables and plots over single runs and sweep folders.

Every run directory below the given folders is read from disk (run.json, evaluate/results.json,
sanity/sanity.json, search/levels.json, failed.json), so a report works on finished, unfinished and
failed runs alike, and on sweeps whose launcher never got to summarise them.

Tables (pandas; printed with rich; saved as CSV):
  summary  one row per (dataset, model, method, sparsity), runs of a method that differ in a setting named
           apart (`cts_kl train.rewind_epoch=3`): test accuracy mean +- std over seeds (sample std,
           ddof=1), accuracy before retraining, measured density, the size of the ticket file
           (evaluate/ticket.safetensors) against the dense state_dict, mean wall time per stage and the mean
           total cost of one run (search + rewind + retrain + evaluate; the sanity checks are listed, not
           counted), and how many runs are done, failed or unfinished.
  runs     one row per run directory (status, error of a failed run).
  sanity   one row per (dataset, model, method, sparsity, variant): margin of the ticket over the variant,
           mean +- std over seeds, and the verdict by SEED_RULE below.
Plots (matplotlib, Agg): accuracy against remaining weights (log scale) with one line per method and error
bars, plus every IMP level of runs that wrote search/levels.json; per-layer density of every method at one
sparsity; sanity margins per method and variant.

Why this module is long: it is one path from run folders to files (find, read, aggregate, print, write) over
the same data frames, and the command that drives it.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import ltsearch.plots as plots
from ltsearch.config import flatten
from ltsearch.cost import ticket_cost
from ltsearch.errors import LtsearchError
from ltsearch.locks import is_held
from ltsearch.paths import FAILURE, LOCK, RECORD, levels_file, results_file, sanity_file
from ltsearch.runtime import write
from ltsearch.stages import STAGES
from ltsearch.storage import atomic_write, load_json
from ltsearch.tables import dataset_label, model_label, render_text, report_renderables, spaced

STAGE_ORDER = tuple(STAGES)
log = logging.getLogger(__name__)

GROUP = ["dataset", "model", "method", "sparsity"]
SEED_RULE = ("a variant passes when the mean margin over seeds (ticket accuracy - variant accuracy, same seed) "
             "> max(threshold, 2 * std / sqrt(n)): the ticket must beat it by more than the threshold and by "
             "more than two standard errors of the seed-to-seed spread (std = sample std of the margins, n = "
             "seeds); with one seed: margin > threshold")


# -- reading runs ------------------------------------------------------------------------------------------------
def find_runs(folders: list[Path]) -> list[Path]:
    """Run directories below `folders`: those with a run record, and failed jobs that never wrote one."""
    runs: set[Path] = set()
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise LtsearchError(f"{folder} does not exist")
        for name in (RECORD, FAILURE):
            runs |= {p.parent for p in folder.rglob(name) if p.is_file()}
    return sorted(runs)


class MalformedRecord(LtsearchError):
    """A record of a run (run.json, results.json, ...) whose content is not what ltsearch writes: the message
    names the file and the field."""


class Fields:
    """A JSON object of a run's records, read field by field: a field that is missing, or not of the kind
    read, is named with its file (`evaluate/results.json: field density.target is missing`)."""

    def __init__(self, data: Any, file: str, at: str = "") -> None:
        if not isinstance(data, dict):
            raise MalformedRecord(f"{file}: {f'field {at}' if at else 'its content'} is {_shown(data)}, not an "
                                  f"object")
        self.data, self.file, self.at = data, file, at

    def _path(self, key: str) -> str:
        return f"{self.at}.{key}" if self.at else key

    def _fail(self, key: str, problem: str) -> MalformedRecord:
        return MalformedRecord(f"{self.file}: field {self._path(key)} {problem}")

    def value(self, key: str, default: Any = None) -> Any:
        """A field's plain value (a number, a string, a list), `default` when it is missing or null."""
        value = self.data.get(key)
        if isinstance(value, dict):
            raise self._fail(key, f"is {_shown(value)}, not a plain value")
        return default if value is None else value

    def number(self, key: str, required: bool = True) -> float | None:
        value = self.data.get(key)
        if value is None and not required:
            return None
        if key not in self.data:
            raise self._fail(key, "is missing")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, f"is {_shown(value)}, not a number")
        return value

    def text(self, key: str) -> str | None:
        value = self.value(key)
        if value is not None and not isinstance(value, str | int | float):
            raise self._fail(key, f"is {_shown(value)}, not a string")
        return None if value is None else str(value)

    def obj(self, key: str, required: bool = False) -> Fields:
        """A nested object (an empty one when it is missing or null and not `required`)."""
        if key not in self.data and required:
            raise self._fail(key, "is missing")
        value = self.data.get(key)
        return Fields({} if value is None and not required else value, self.file, self._path(key))

    def objects(self, key: str) -> list[tuple[str, Fields]]:
        """The entries of a nested object whose values are objects (per-layer or per-variant records)."""
        group = self.obj(key)
        return [(str(name), group.obj(name, required=True)) for name in group.data]


def _shown(value: Any) -> str:
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    text = repr(value)
    return kind if isinstance(value, dict | list) or len(text) > 40 else f"{kind} ({text})"


def _fields(run_dir: Path, name: Path | str) -> Fields | None:
    """A record of the run as `Fields`, None when the file does not exist."""
    path = run_dir / name
    if not path.exists():
        return None
    return Fields(load_json(path), str(path.relative_to(run_dir)))


@dataclass
class RunData:
    row: dict[str, Any]
    layers: list[dict[str, Any]] = field(default_factory=list)
    levels: list[dict[str, Any]] = field(default_factory=list)
    sanity: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)  # the config as dotted keys (see run_settings)

    def rename_method(self, method: str) -> None:
        for entry in (self.row, *self.layers, *self.levels, *self.sanity):
            entry["method"] = method


# Config keys that do not make a run another experiment: the seed (what tells runs of one setting apart), the
# sparsity (a column of its own), and what decides only where and how a run executes or what it checks.
NOT_SETTINGS = ("seed", "sparsity", "stages", "runtime", "logger", "sanity", "sweep_metric", "layer_collapse",
                "dataset.root", "dataset.download")


def run_settings(config: dict[str, Any]) -> dict[str, str]:
    """A run's config as dotted keys with their values as text, less the keys under NOT_SETTINGS."""
    return {key: str(value) for key, value in flatten(config).items()
            if not any(key == p or key.startswith(p + ".") for p in NOT_SETTINGS)}


def split_methods_by_setting(data: list[RunData]) -> None:
    """Runs of one method on one model and dataset whose configs differ in a setting (a sweep over
    train.rewind_epoch or pruner.lr, or protocols that search one method at another point) are reported
    apart: the method's name gets the settings in which the run differs from the others, `cts_kl
    train.rewind_epoch=3`, so that no table averages different settings as if they were seeds. Only keys
    that differ between runs at the same sparsity count (a value that follows from the sparsity, such as
    IMP's number of levels, does not split a method's line), and only keys every recorded run of the group
    has (runs recorded by an older version may lack a key added since); a run without a record keeps its
    name."""
    groups: dict[tuple[Any, ...], list[RunData]] = {}
    for d in data:
        if d.settings:
            groups.setdefault((d.row.get("dataset"), d.row.get("model"), d.row.get("method")), []).append(d)
    for runs in groups.values():
        shared = set.intersection(*(set(d.settings) for d in runs))
        varying = sorted(k for k in shared if _varies_at_one_sparsity(runs, k))
        usual = {k: _usual_value([d.settings[k] for d in runs]) for k in varying}
        for d in runs:
            shown = [f"{k}={d.settings[k]}" for k in varying if d.settings[k] != usual[k]]
            if shown:
                d.rename_method(" ".join([str(d.row["method"]), *shown]))


def _varies_at_one_sparsity(runs: list[RunData], key: str) -> bool:
    values: dict[Any, set[str]] = {}
    for d in runs:
        values.setdefault(d.row.get("sparsity"), set()).add(d.settings[key])
    return any(len(v) > 1 for v in values.values())


def _usual_value(values: list[str]) -> str | None:
    """The value most runs have, when one value is ahead of every other (an ablation's defaults: a run names
    only what it changes); None on a tie (a sweep over two values: every run names its value)."""
    counts = Counter(values).most_common(2)
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else None


def read_run(run_dir: Path) -> RunData:
    record, failure = _fields(run_dir, RECORD), _fields(run_dir, FAILURE)
    if record is not None:
        cfg = record.obj("config", required=True)
        pruner = cfg.obj("pruner", required=True)
        ident = {"method": record.text("label") or pruner.text("name"),
                 "model": model_label(cfg.obj("model", required=True).data),
                 "dataset": dataset_label(cfg.obj("dataset", required=True).data),
                 "sparsity": float(cfg.number("sparsity") or 0), "seed": cfg.number("seed"),
                 "when": pruner.text("when")}
    else:  # a job that failed before it wrote run.json (invalid config, ...): the sweep callback's record
        job = failure.obj("job") if failure is not None else Fields({}, FAILURE)
        ident = {k: job.value(k) for k in ("method", "model", "dataset", "sparsity", "seed", "when")}
    row: dict[str, Any] = {**ident, "status": "unfinished", "run": str(run_dir)}
    data = RunData(row, settings=run_settings(cfg.data) if record is not None else {})
    results = _fields(run_dir, results_file(run_dir).relative_to(run_dir))
    if results is not None:
        pp = results.obj("pruning_point").obj("pruning_point")
        times, density = results.obj("wall_time"), results.obj("density", required=True)
        ticket = ticket_cost(results.obj("cost").data)
        row.update(status="done", test_acc=results.number("test_acc"), acc_before_retrain=pp.value("test_acc"),
                   density=density.number("target"), measured_density=density.number("measured"),
                   # the ticket's cost: every stage but the sanity checks (results written before "ticket"
                   # existed called it "total")
                   **{f"time_{s}": times.value(s) for s in STAGE_ORDER},
                   total_time=times.value("ticket", times.value("total")),
                   # hardware-independent: dense training epochs, including upstream work reused from the cache
                   cost_epochs=ticket.get("epochs"), cost_flops=ticket.get("flops"),
                   # the compact ticket file beside results.json, and the dense state_dict's bytes
                   ticket_file_bytes=results.obj("ticket_file").value("bytes"),
                   dense_bytes=results.obj("ticket_file").value("dense_bytes"))
        for i, (name, layer) in enumerate(results.objects("layers")):
            data.layers.append({**ident, "layer": name, "index": i, "density": layer.number("density"),
                                "kept": layer.number("kept"), "total": layer.number("total")})
    elif is_held(run_dir / LOCK):  # a resumed run, whose record of an earlier stop is replaced when it ends
        row["status"] = "running"
    elif failure is not None:
        row.update(status="failed", failed_stage=failure.text("stage"), error=failure.text("error"))
    if row.get("sparsity") is not None:
        row.setdefault("density", 1.0 - float(row["sparsity"]))
    levels_path = levels_file(run_dir)
    levels = load_json(levels_path) if levels_path.exists() else []
    if not isinstance(levels, list):
        raise MalformedRecord(f"{levels_path.relative_to(run_dir)}: its content is {_shown(levels)}, not a list")
    for n, level in enumerate(levels):
        level = Fields(level, str(levels_path.relative_to(run_dir)), f"[{n}]")
        data.levels.append({**ident, **{k: level.value(k) for k in ("level", "density", "kept", "total",
                                                                     "test_acc")}})
    sanity = _fields(run_dir, sanity_file(run_dir).relative_to(run_dir))
    if sanity is not None:
        for variant, v in sanity.objects("variants"):
            data.sanity.append({**ident, "variant": variant, "ticket_acc": sanity.number("ticket_accuracy"),
                                "accuracy": v.number("accuracy", required=False), "margin": v.number("margin", required=False),
                                "passed": v.value("passed"), "threshold": sanity.number("threshold"),
                                "skipped_reason": v.value("skipped_reason")})
    return data


@dataclass
class Report:
    runs: pd.DataFrame
    summary: pd.DataFrame
    sanity_runs: pd.DataFrame
    sanity: pd.DataFrame
    layers: pd.DataFrame
    levels: pd.DataFrame

    @property
    def failed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "failed"] if not self.runs.empty else self.runs


def _read_or_skip(run_dir: Path) -> RunData | None:
    """A run whose records are malformed (hand-edited, from another tool) is skipped with a warning naming it,
    the file and the field."""
    try:
        return read_run(run_dir)
    except LtsearchError as exc:
        log.warning("skipping %s: a record is malformed (%s)", run_dir, exc)
    except (LookupError, TypeError, ValueError, AttributeError) as exc:  # a field read without `Fields`
        log.warning("skipping %s: a record is malformed (%s: %s)", run_dir, type(exc).__name__, exc)
    return None


def build_report(folders: list[Path]) -> Report:
    data = [d for d in map(_read_or_skip, find_runs(folders)) if d is not None]
    split_methods_by_setting(data)
    runs = pd.DataFrame([d.row for d in data])
    sanity_runs = pd.DataFrame([s for d in data for s in d.sanity])
    return Report(runs=runs, summary=summarize(runs), sanity_runs=sanity_runs,
                  sanity=summarize_sanity(sanity_runs),
                  layers=pd.DataFrame([x for d in data for x in d.layers]),
                  levels=pd.DataFrame([x for d in data for x in d.levels]))


# -- aggregation -------------------------------------------------------------------------------------------------
def _std(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """method x sparsity: accuracy mean +- std over seeds (finished runs), costs, and run counts."""
    if runs.empty:
        return pd.DataFrame()
    rows = []
    keyed = runs.copy()
    for column in GROUP:
        keyed[column] = keyed[column].fillna("?") if column != "sparsity" else keyed[column]
    keyed = keyed.dropna(subset=["sparsity"])
    for key, group in keyed.groupby(GROUP, sort=True, dropna=False):
        done = group[group["status"] == "done"]
        row = dict(zip(GROUP, key, strict=True))
        row["density"] = 1.0 - float(row["sparsity"])
        row.update(n_done=len(done), n_failed=int((group["status"] == "failed").sum()),
                   n_unfinished=int(group["status"].isin(["unfinished", "running"]).sum()),
                   seeds=" ".join(str(s) for s in sorted(done["seed"].dropna().astype(int))))
        for column in ("test_acc", "acc_before_retrain"):
            values = pd.to_numeric(done.get(column, pd.Series(dtype=float)), errors="coerce")
            row[f"{column}_mean"] = float(values.mean()) if values.notna().any() else float("nan")
            row[f"{column}_std"] = _std(values)
        row["measured_density"] = (float(done["measured_density"].mean()) if len(done) else float("nan"))
        for stage in STAGE_ORDER:
            column = f"time_{stage}"
            values = pd.to_numeric(done.get(column, pd.Series(dtype=float)), errors="coerce")
            row[f"{column}_s"] = float(values.mean()) if values.notna().any() else float("nan")
        for column in ("cost_epochs", "cost_flops", "ticket_file_bytes", "dense_bytes"):
            values = pd.to_numeric(done.get(column, pd.Series(dtype=float)), errors="coerce")
            row[column] = float(values.mean()) if values.notna().any() else float("nan")
        total = pd.to_numeric(done.get("total_time", pd.Series(dtype=float)), errors="coerce")
        row["total_time_s"] = float(total.mean()) if total.notna().any() else float("nan")
        row["total_time_all_seeds_s"] = float(total.sum()) if total.notna().any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def seed_verdict(margins: pd.Series, threshold: float) -> tuple[str, float]:
    """(verdict, bound) of SEED_RULE for the per-seed margins of one variant."""
    margins = margins.dropna()
    n = len(margins)
    if n == 0:
        return "skipped", float("nan")
    bound = threshold if n == 1 else max(threshold, 2 * _std(margins) / math.sqrt(n))
    return ("pass" if float(margins.mean()) > bound else "FAIL"), bound


def summarize_sanity(sanity_runs: pd.DataFrame) -> pd.DataFrame:
    if sanity_runs.empty:
        return pd.DataFrame()
    rows = []
    for key, group in sanity_runs.groupby([*GROUP, "variant"], sort=False, dropna=False):
        margins = pd.to_numeric(group["margin"], errors="coerce")
        threshold = float(group["threshold"].max())
        verdict, bound = seed_verdict(margins, threshold)
        tested = group[group["passed"].notna()]
        reasons = sorted({r for r in group["skipped_reason"].dropna()})
        rows.append({
            **dict(zip([*GROUP, "variant"], key, strict=True)),
            "n": int(margins.notna().sum()),
            "ticket_acc_mean": float(pd.to_numeric(group["ticket_acc"]).mean()),
            "variant_acc_mean": float(pd.to_numeric(group["accuracy"], errors="coerce").mean()),
            "margin_mean": float(margins.mean()) if margins.notna().any() else float("nan"),
            "margin_std": _std(margins),
            "threshold": threshold,
            "bound": bound,
            "verdict": verdict,
            "seeds_passed": f"{int(tested['passed'].astype(bool).sum())}/{len(tested)}",
            "skipped_reason": "; ".join(reasons) if verdict == "skipped" else "",
            "rule": SEED_RULE,
        })
    order = {v: i for i, v in enumerate(("shuffle", "invert", "reinit", "random"))}
    out = pd.DataFrame(rows)
    out["_order"] = out["variant"].map(lambda v: order.get(v, 99))
    return out.sort_values([*GROUP, "_order"]).drop(columns="_order").reset_index(drop=True)


# -- printing ----------------------------------------------------------------------------------------------------
def renderables(report: Report, root: Path | None = None) -> list[Any]:
    return report_renderables(report.runs, report.summary, report.sanity, STAGE_ORDER, SEED_RULE, root)


def print_report(report: Report, root: Path | None = None) -> None:
    for renderable in spaced(renderables(report, root)):
        write(renderable, soft_wrap=isinstance(renderable, str))


def report_text(report: Report, root: Path | None = None) -> str:
    return render_text(renderables(report, root))


# -- writing -----------------------------------------------------------------------------------------------------
def _csv(path: Path, df: pd.DataFrame) -> Path:
    atomic_write(path, df.to_csv(index=False).encode())
    return path


def write_report(report: Report, csv: Path | None = None, plots_dir: Path | None = None,
                 layers_at: float | None = None, text: Path | None = None, root: Path | None = None) -> list[Path]:
    """CSV files (summary at `csv`, runs and sanity beside it), plots into `plots_dir`; return the paths
    written."""
    written: list[Path] = []
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        written.append(_csv(csv, report.summary))
        written.append(_csv(csv.with_name(f"{csv.stem}_runs.csv"), report.runs))
        if not report.sanity.empty:
            written.append(_csv(csv.with_name(f"{csv.stem}_sanity.csv"), report.sanity))
            written.append(_csv(csv.with_name(f"{csv.stem}_sanity_runs.csv"), report.sanity_runs))
    if text is not None:
        atomic_write(text, report_text(report, root or text.parent).encode())
        written.append(text)
    if plots_dir is not None:
        written += plots.write_plots(report.summary, report.levels, report.layers, report.sanity, plots_dir,
                                     layers_at)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ltsearch report",
        description="Tables and plots over the runs found below DIRs (single runs and sweep folders).")
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="write the summary table to this CSV file (per-run and "
                                                 "sanity tables go beside it as <name>_runs.csv, <name>_sanity.csv, "
                                                 "the printed tables as <name>.txt)")
    parser.add_argument("--plots", type=Path, help="folder for the plots, PNG, PDF and SVG (default: the folder of --csv, "
                                                   "else the first DIR)")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    parser.add_argument("--layers-at", type=float, metavar="SPARSITY",
                        help="sparsity of the per-layer density plot (default: the one most methods reached)")
    args = parser.parse_args(argv)
    if args.csv is not None and args.csv.is_dir():
        raise LtsearchError(f"--csv {args.csv} is a folder; name the CSV file to write (e.g. {args.csv / 'summary.csv'})")
    report = build_report(args.dirs)
    if report.runs.empty:
        raise LtsearchError(f"no runs found below {', '.join(map(str, args.dirs))}")
    root = args.dirs[0] if args.dirs[0].is_dir() else args.dirs[0].parent  # run folders are shown relative to it
    print_report(report, root)
    plots_dir = None if args.no_plots else (args.plots or (args.csv.parent if args.csv else args.dirs[0]))
    written = write_report(report, csv=args.csv, plots_dir=plots_dir, layers_at=args.layers_at,
                           text=args.csv.with_suffix(".txt") if args.csv else None, root=root)
    for line in plots.describe_written(written):
        write(line, soft_wrap=True)
    return 0
