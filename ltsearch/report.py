"""`ltsearch report DIR...`: one row per run found below the given folders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from ltsearch.errors import LtsearchError
from ltsearch.rundir import FAILURE, RECORD
from ltsearch.runtime import console
from ltsearch.storage import load_json


def find_runs(folders: list[Path]) -> list[Path]:
    runs: list[Path] = []
    for folder in folders:
        if not folder.exists():
            raise LtsearchError(f"{folder} does not exist")
        runs += sorted(p.parent for p in folder.rglob(RECORD))
    return sorted(set(runs))


def run_row(run_dir: Path) -> dict[str, Any]:
    record = load_json(run_dir / RECORD)
    cfg = record["config"]
    row: dict[str, Any] = {
        "run": str(run_dir),
        "method": record.get("label") or cfg["pruner"]["name"],
        "model": cfg["model"]["name"],
        "dataset": cfg["dataset"]["name"],
        "sparsity": cfg["sparsity"],
        "seed": cfg["seed"],
        "status": "unfinished",
    }
    results_path = run_dir / "evaluate" / "results.json"
    if results_path.exists():
        res = load_json(results_path)
        pp = (res.get("pruning_point") or {}).get("pruning_point") or {}
        row.update(
            status="done",
            test_acc=res["test_acc"],
            acc_before_retrain=pp.get("test_acc"),
            measured_density=res["density"]["measured"],
            total_time=res["wall_time"]["total"],
        )
    elif (run_dir / FAILURE).exists():
        row.update(status="failed", error=load_json(run_dir / FAILURE).get("error"))
    return row


def runs_table(folders: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([run_row(r) for r in find_runs(folders)])


def print_table(df: pd.DataFrame) -> None:
    table = Table(title=f"{len(df)} run(s)")
    columns = [c for c in ("method", "model", "dataset", "sparsity", "seed", "status", "test_acc",
                           "acc_before_retrain", "measured_density", "total_time", "run") if c in df]
    for column in columns:
        table.add_column(column, overflow="fold")
    for _, row in df.iterrows():
        table.add_row(*[_fmt(row.get(c)) for c in columns])
    console().print(table)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ltsearch report", description="Tabulate runs found below DIRs.")
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    df = runs_table(args.dirs)
    if df.empty:
        raise LtsearchError(f"no runs found below {', '.join(map(str, args.dirs))}")
    print_table(df)
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0
