#!/usr/bin/env python
"""Every method on the quickstart's defaults (1-D CNN, MNIST-1D): accuracy and cost by sparsity, and the
sanity margins of the default run over seeds.

Parts, each printed as a markdown table (and saved as CSV under --out):

  methods   CTS-KL and CTS (task loss) with the default search, LTR, SynFlow, SNIP, magnitude and random at
            sparsities 0.9, 0.99, 0.993 and 0.998, seeds 0-2, every run on the default schedule with no
            override but the method, the sparsity and the seed (no sanity stage: the table compares tickets),
            so each method at its default pruning point (CTS pruners at epoch 3 of the quickstart's
            protocol, LTR at the schedule's rewind epoch 1, the others at initialisation).
            Test accuracy after retraining (mean ± std over seeds) and the ticket's cost in dense training
            epochs, reused work included (LTR's IMP levels are shared through the artifact cache between
            its runs to different sparsities, and each run is charged all its levels); then, per sparsity,
            CTS-KL against LTR: the accuracy gap and CTS-KL's cost as a fraction of LTR's.
  ablation  CTS-KL at the default sparsity, one setting changed at a time from the defaults (the search point,
            search length and mask lr, temperature, GradBalance slack, objective, BatchNorm in the search,
            the dense schedule, the network's head and first convolution; the task loss is CTS in the methods
            part), seeds 0-2, with the sanity stage: the ticket's accuracy,
            its margins over the shuffled and the random mask, the kept weights per layer, and the cost.
  quickstart  `ltsearch run seed=N` for seeds 0-4 exactly as a user runs it (the sanity stage included):
            the ticket's accuracy, each sanity margin and the dense reference.

Runs go through the CLI (`python -m ltsearch run ...`) into their own folders under --out, --jobs at a
time with one thread each (two single-threaded runs use two cores better than one two-threaded run); an
interrupted benchmark resumes and finished runs are reused.

    python scripts/bench_methods.py                          # every part (about 1.5 hours on 2 cores)
    python scripts/bench_methods.py --parts methods --seeds 0
    python scripts/bench_methods.py --parts methods quickstart --methods CTS-KL "CTS (task loss)" LTR \
        --overrides train.rewind_epoch=1 --out outputs/bench_methods_rewind1       # another rewind point
    python scripts/bench_methods.py --parts methods --methods CTS-KL SynFlow --sparsities 0.99 \
        --overrides model.head=flatten --out outputs/bench_methods_flatten         # another network
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, ensure_run, fmt_mean_std, markdown_table, run_parts, save_rows  # noqa: E402

from ltsearch.cost import ticket_cost  # noqa: E402

METHODS = {"CTS-KL": ["pruner=cts_kl"], "CTS (task loss)": ["pruner=cts"], "LTR": ["pruner=ltr"],
           "SynFlow": ["pruner=synflow"], "SNIP": ["pruner=snip"], "magnitude": ["pruner=magnitude"],
           "random": ["pruner=random"]}
SPARSITIES = [0.9, 0.99, 0.993, 0.998]
NO_SANITY = "stages=[search,rewind,retrain,evaluate]"


def run_all(jobs: list[tuple[Path, list[str]]], parallel: int) -> list[dict[str, Any]]:
    """ensure_run over `jobs`, `parallel` at a time, each on one thread; results in the order given."""
    def one(job: tuple[Path, list[str]]) -> dict[str, Any]:
        run_dir, overrides = job
        return ensure_run(run_dir, [*overrides, "runtime.threads=1", "runtime.progress=false"])

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, jobs))


def part_methods(out: Path, seeds: list[int], sparsities: list[float], parallel: int,
                 methods: list[str], extra: list[str]) -> None:
    keys = [(m, s, seed) for m in methods for s in sparsities for seed in seeds]
    # LTR first, lowest sparsity first: its later runs reuse the IMP levels the earlier ones stored
    keys.sort(key=lambda k: (k[0] != "LTR", k[1]))
    jobs = [(out / "methods" / f"{METHODS[m][0].split('=')[1]}_{s}_seed{seed}",
             [*METHODS[m], f"sparsity={s}", f"seed={seed}", NO_SANITY, *extra]) for m, s, seed in keys]
    results = dict(zip(keys, run_all(jobs, parallel), strict=True))
    # per (method, sparsity): test accuracy % and the ticket's dense epochs of each seed
    acc = {(m, s): [100 * results[(m, s, seed)]["test_acc"] for seed in seeds] for m in methods for s in sparsities}
    cost = {(m, s): [ticket_cost(results[(m, s, seed)]["cost"]).get("epochs", float("nan")) for seed in seeds]
            for m in methods for s in sparsities}
    rows, summary = [], []
    for method in methods:
        row: dict[str, Any] = {"method": method}
        for s in sparsities:
            row[f"acc @ {s}"] = fmt_mean_std(acc[(method, s)], 1)
            row[f"epochs @ {s}"] = f"{statistics.mean(cost[(method, s)]):.0f}"
        rows.append(row)
    pai = [m for m in ("SynFlow", "SNIP", "magnitude", "random") if m in methods]
    for s in sparsities if {"CTS-KL", "LTR"} <= set(methods) and pai else []:  # the comparison needs all three
        mean_acc = {m: statistics.mean(acc[(m, s)]) for m in methods}
        best_pai = max(pai, key=mean_acc.__getitem__)
        cost_ratio = statistics.mean(cost[("CTS-KL", s)]) / statistics.mean(cost[("LTR", s)])
        summary.append({"sparsity": s, "CTS-KL - LTR (points)": f"{mean_acc['CTS-KL'] - mean_acc['LTR']:+.1f}",
                        "CTS-KL cost / LTR cost": f"{cost_ratio:.2f}", "best pruning at init": best_pai,
                        "CTS-KL - best PaI (points)": f"{mean_acc['CTS-KL'] - mean_acc[best_pai]:+.1f}"})
    allocation = []
    for method in methods:
        for s in sparsities:
            kept = [[layer["kept"] for layer in results[(method, s, seed)]["layers"].values()] for seed in seeds]
            allocation.append({"method": method, "sparsity": s, "kept per layer (seed mean)":
                               " / ".join(str(round(statistics.mean(c))) for c in zip(*kept, strict=True))})
    print(f"\n### Methods by sparsity (seeds {','.join(map(str, seeds))}; test accuracy %, cost in dense epochs)\n")
    print(markdown_table(rows))
    if summary:
        print("\n" + markdown_table(summary))
    print(f"\n### Where each method keeps its weights (layers in order: {', '.join(results[keys[0]]['layers'])})\n")
    print(markdown_table(allocation))
    save_rows(out / "methods.csv", rows)
    save_rows(out / "methods_allocation.csv", allocation)
    if summary:
        save_rows(out / "methods_summary.csv", summary)


ABLATIONS = {
    "defaults": [],
    "search length short (1/8)": ["pruner.length=short"],
    "search 3x longer (30 epochs)": ["pruner.epochs=30"],
    "mask lr 0.1 (the authors')": ["pruner.lr=0.1"],
    "search batch 32 (4x the steps)": ["pruner.batch_size=32"],
    "search at init": ["pruner.when=init"],
    "rewind epoch 1 (LTR's point)": ["train.rewind_epoch=1"],
    "temperature 1.0": ["pruner.temperature=1.0"],
    "slack 1.0 (none)": ["pruner.slack=1.0"],
    "objective forward KL": ["objective=forward_kl"],
    "BatchNorm on running statistics": ["pruner.batchnorm=running"],
    "dense schedule 20 epochs": ["train.epochs=20"],
    "first convolution pruned": ["model.exclude=[]"],
    "flatten head (12,800 weights)": ["model.head=flatten"],
    "both: the previous network": ["model.head=flatten", "model.exclude=[]"],
}


def setting_folder(overrides: list[str]) -> str:
    """An ablation row's folder, named by its overrides (so that a row added or moved never reuses another's
    runs) in characters that are safe in a path and in a Hydra override (`hydra.run.dir=...`)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", " ".join(overrides)) or "defaults"


def part_ablation(out: Path, seeds: list[int], parallel: int, extra: list[str]) -> None:
    keys = [(name, seed) for name in ABLATIONS for seed in seeds]
    jobs = [(out / "ablation" / f"{setting_folder(ABLATIONS[name])}_seed{seed}",
             ["pruner=cts_kl", *extra, *ABLATIONS[name], f"seed={seed}"]) for name in ABLATIONS for seed in seeds]
    results = dict(zip(keys, run_all(jobs, parallel), strict=True))
    rows = []
    for name in ABLATIONS:
        runs = [results[(name, seed)] for seed in seeds]

        def margin(r: dict[str, Any], variant: str) -> float:
            v = ((r.get("sanity") or {}).get("variants") or {}).get(variant) or {}
            return float("nan") if v.get("margin") is None else 100 * v["margin"]

        kept = [[layer["kept"] for layer in r["layers"].values()] for r in runs]
        rows.append({"setting": name, "override": " ".join(ABLATIONS[name]) or "-",
                     "ticket %": fmt_mean_std([100 * r["test_acc"] for r in runs], 1),
                     "over shuffle": fmt_mean_std([margin(r, "shuffle") for r in runs], 1),
                     "over random": fmt_mean_std([margin(r, "random") for r in runs], 1),
                     "kept per layer": "/".join(str(round(statistics.mean(c))) for c in zip(*kept, strict=True)),
                     "ticket cost (dense epochs)": f"{statistics.mean(ticket_cost(r['cost'])['epochs'] for r in runs):.1f}"})
    print(f"\n### CTS-KL ablation at the default sparsity (seeds {','.join(map(str, seeds))})\n")
    print(markdown_table(rows))
    save_rows(out / "ablation.csv", rows)


def part_quickstart(out: Path, seeds: list[int], parallel: int, extra: list[str]) -> None:
    results = run_all([(out / "quickstart" / f"seed{seed}", [f"seed={seed}", *extra]) for seed in seeds], parallel)
    rows = []
    for seed, r in zip(seeds, results, strict=True):
        sanity = r.get("sanity") or {}
        row: dict[str, Any] = {"seed": seed, "ticket %": f"{100 * r['test_acc']:.1f}"}
        for name, v in (sanity.get("variants") or {}).items():
            row[f"{name} margin (points)"] = "skipped" if v["margin"] is None else f"{100 * v['margin']:+.1f}"
        dense = (sanity.get("dense") or {}).get("accuracy")
        row["dense %"] = "-" if dense is None else f"{100 * dense:.1f}"
        row["passed all"] = sanity.get("passed_all")
        row["cost (dense epochs, sanity included)"] = f"{r['cost']['total_with_reused']['epochs']:.1f}"
        rows.append(row)
    print(f"\n### The default run, seeds {','.join(map(str, seeds))}\n")
    print(markdown_table(rows))
    save_rows(out / "quickstart.csv", rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["methods", "quickstart", "ablation"],
                        choices=["methods", "quickstart", "ablation"])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_methods")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the methods table")
    parser.add_argument("--quickstart-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=SPARSITIES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="methods of the methods table (the comparison rows need CTS-KL, LTR and a PaI method)")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="overrides of every run (another --out for each set; an ablation row's own setting wins)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    args = parser.parse_args()
    parts = {"methods": lambda: part_methods(args.out, args.seeds, args.sparsities, args.jobs, args.methods,
                                             args.overrides),
             "quickstart": lambda: part_quickstart(args.out, args.quickstart_seeds, args.jobs, args.overrides),
             "ablation": lambda: part_ablation(args.out, args.ablation_seeds, args.jobs, args.overrides)}
    return run_parts({name: parts[name] for name in args.parts})


if __name__ == "__main__":
    sys.exit(main())
