#!/usr/bin/env python
"""Benchmark of the pruning baselines on LeNet-300-100 / real MNIST.

Every method runs through the CLI, one run directory each (`OUT/runs/<method>/sparsity_<s>/seed_<k>`):

    python -m ltsearch run experiment=lenet_mnist dataset.root=ROOT pruner=<option> sparsity=<s> seed=<k> \
        stages=[search,rewind,retrain,evaluate] runtime.progress=false hydra.run.dir=<run dir>

Methods: random, magnitude at init and at the rewind point, SNIP, GraSP, SynFlow, LTR, and CTS-KL and CTS
when the installed ltsearch has them (conf/pruner/cts_kl.yaml, cts.yaml). Every run uses the same training
schedule, the lenet_mnist train preset (SGD 0.1, batch 128, 40 epochs, rewind point epoch 1, pinned here: the preset now rewinds to epoch 5): a mask found
at init is trained for epochs 0-40, a mask found at the rewind point for epochs 1-40 after one epoch of
dense training. The sanity stage is left out (it retrains four more networks per run); LTR's search trains
every IMP level over the same schedule, which is its cost.

Each run's evaluate/results.json gives the test accuracy after retraining, the accuracy of the ticket
before retraining (results["pruning_point"]["pruning_point"]["test_acc"]) and the wall time of every stage.
A finished run is reused, and an unfinished one resumes where it stopped, so re-running the script after
an interruption (or with more seeds) only does what is missing.

Output (aggregated by ltsearch.report, as `ltsearch report` does): a markdown table (mean +- sample std
over seeds), OUT/runs.csv (one row per run), OUT/summary.csv, the wall time of LTR to the highest sparsity
against CTS-KL to the same sparsity (same seed, same machine, one invocation: quote the ratio, not the
times, for CPU runs), and the accuracy of every IMP level of the LTR run at the highest sparsity (first
seed), read from its search/levels.json. Each run's log is its run directory's run.log.

Usage:
  python scripts/bench_baselines.py                                  # the full benchmark (hours on a CPU)
  python scripts/bench_baselines.py --quick --out /tmp/bench_quick  # verification: 2 epochs, 2000 training
                                                                      # images, seed 0 (27 runs, ~12 min)
  python scripts/bench_baselines.py --methods ltr cts_kl --sparsities 0.993 --seeds 0
Exit status 0 when every run finished, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, data_root, ensure_run  # noqa: E402

from ltsearch.paths import levels_file, results_file  # noqa: E402
from ltsearch.report import Report, build_report  # noqa: E402

DEFAULT_ROOT = data_root()
STAGES = "stages=[search,rewind,retrain,evaluate]"

# method label -> overrides (the pruner option and, where it differs from the option's default, `when`)
BASELINES: dict[str, list[str]] = {
    "random": ["pruner=random"],
    "magnitude_init": ["pruner=magnitude", "pruner.when=init", "pruner.label=magnitude_init"],
    "magnitude_rewind": ["pruner=magnitude", "pruner.when=rewind", "pruner.label=magnitude_rewind"],
    "snip": ["pruner=snip"],
    "grasp": ["pruner=grasp"],
    "synflow": ["pruner=synflow"],
    "ltr": ["pruner=ltr"],
}
CTS = {"cts_kl": ["pruner=cts_kl"], "cts": ["pruner=cts"]}
QUICK = ["train.epochs=2", "dataset.train_subset=2000", "dataset.test_subset=2000"]


def run_dir(out: Path, method: str, sparsity: float, seed: int) -> Path:
    return out / "runs" / method / f"sparsity_{sparsity}" / f"seed_{seed}"


def run_one(out: Path, method: str, overrides: list[str], sparsity: float, seed: int, common: list[str],
            dry_run: bool) -> bool:
    """Run (or reuse, or resume) one job through the CLI; return whether it has finished. A failed run is
    reported and the benchmark goes on; its log is the run directory's run.log."""
    path = run_dir(out, method, sparsity, seed)
    job = [*common, *overrides, f"sparsity={sparsity}", f"seed={seed}"]
    if dry_run:
        done = results_file(path).exists()
        print(f"{'finished' if done else 'to run'}: python -m ltsearch run {' '.join(job)} hydra.run.dir={path}")
        return done
    print(f"{method} sparsity {sparsity} seed {seed}: {path}", flush=True)
    t0 = time.perf_counter()
    try:
        ensure_run(path, job)
    except RuntimeError as exc:
        print(f"  FAILED after {time.perf_counter() - t0:.0f}s (log: {path / 'run.log'}):\n{exc}", flush=True)
        return False
    return True


def pm(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean * scale:.{digits}f}" + ("" if math.isnan(std) else f" ± {std * scale:.{digits}f}")


def markdown(report: Report, methods: list[str]) -> str:
    """Accuracy table from `ltsearch report`'s summary (mean ± sample std over seeds), in method order."""
    summary = report.summary.copy()
    summary["_order"] = summary["method"].map({m: i for i, m in enumerate(methods)})
    collapsed = set()
    if not report.layers.empty:
        hit = report.layers[report.layers["kept"] == 0]
        collapsed = {(m, s, seed) for m, s, seed in zip(hit["method"], hit["sparsity"], hit["seed"], strict=True)}
    lines = ["| method | sparsity | seeds | test acc % | acc before retraining % | search s | total s | collapse |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in summary.sort_values(["sparsity", "_order"]).iterrows():
        n_collapsed = sum(1 for m, s, _ in collapsed if m == r["method"] and s == r["sparsity"])
        lines.append(f"| {r['method']} | {r['sparsity']} | {r['seeds'] or '-'} | "
                     f"{pm(r['test_acc_mean'], r['test_acc_std'])} | "
                     f"{pm(r['acc_before_retrain_mean'], r['acc_before_retrain_std'])} | "
                     f"{r['time_search_s']:.0f} | {r['total_time_s']:.0f} | "
                     f"{f'{n_collapsed} run(s)' if n_collapsed else ''} |")
    return "\n".join(lines)


def ltr_versus_cts(report: Report, sparsity: float) -> str:
    runs = report.runs
    done = runs[(runs["status"] == "done") & (runs["sparsity"] == sparsity)] if not runs.empty else runs
    lines = []
    for seed in sorted(set(done["seed"])) if not done.empty else []:
        ltr = done[(done["method"] == "ltr") & (done["seed"] == seed)]
        cts = done[(done["method"] == "cts_kl") & (done["seed"] == seed)]
        if len(ltr) and len(cts):
            a, b = ltr.iloc[0], cts.iloc[0]
            lines.append(f"seed {seed}: LTR {a['total_time']:.0f}s (search {a['time_search']:.0f}s), CTS-KL "
                         f"{b['total_time']:.0f}s (search {b['time_search']:.0f}s): LTR / CTS-KL = "
                         f"{a['total_time'] / b['total_time']:.2f}x")
    return "\n".join(lines) or f"(no finished LTR and CTS-KL pair at sparsity {sparsity})"


def imp_curve(out: Path, sparsity: float, seed: int) -> str:
    path = run_dir(out, "ltr", sparsity, seed)
    if not levels_file(path).exists():
        return f"(no LTR run at sparsity {sparsity}, seed {seed})"
    levels = json.loads(levels_file(path).read_text())
    results = results_file(path)
    final = json.loads(results.read_text())["test_acc"] if results.exists() else None
    lines = ["| level | density % | kept | test acc % |", "|---|---|---|---|"]
    for level in levels:
        acc = final if level["test_acc"] is None else level["test_acc"]  # level L's training is the retrain stage
        lines.append(f"| {level['level']} | {100 * level['density']:.3f} | {level['kept']} | "
                     f"{'-' if acc is None else f'{100 * acc:.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_baselines")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT, help="folder holding MNIST/raw/")
    parser.add_argument("--methods", nargs="+", help="subset of the methods (default: all)")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.99, 0.993])
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--quick", action="store_true", help="verification: " + " ".join(QUICK) + ", seed 0")
    parser.add_argument("--device", default="auto", help="runtime.device of every run")
    parser.add_argument("--threads", type=int, default=0, help="runtime.threads of every run (0 = torch default)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their commands, run nothing")
    args = parser.parse_args(argv)

    methods = {**BASELINES, **CTS}
    if args.methods:
        unknown = [m for m in args.methods if m not in methods]
        if unknown:
            parser.error(f"unknown method(s) {unknown}; known: {', '.join(methods)}")
        methods = {m: methods[m] for m in args.methods}
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    common = ["experiment=lenet_mnist", "train.rewind_epoch=1", f"dataset.root={args.data_root}", STAGES, "runtime.progress=false",
              f"runtime.device={args.device}", f"runtime.threads={args.threads}", *(QUICK if args.quick else [])]
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else (
        f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})")
    print(f"# bench_baselines: {', '.join(methods)} at sparsity {args.sparsities}, seeds {seeds}; {device}; "
          f"torch {torch.__version__}{'; QUICK mode' if args.quick else ''}", flush=True)

    t0 = time.perf_counter()
    jobs = [(method, overrides, sparsity, seed) for sparsity in args.sparsities for seed in seeds
            for method, overrides in methods.items()]
    finished = [run_one(args.out, m, o, sp, seed, common, args.dry_run) for m, o, sp, seed in jobs]
    if args.dry_run:
        return 0
    ran = [run_dir(args.out, m, sp, seed) for m, _, sp, seed in jobs if run_dir(args.out, m, sp, seed).exists()]
    report = build_report(ran)
    report.runs.to_csv(args.out / "runs.csv", index=False)
    report.summary.to_csv(args.out / "summary.csv", index=False)

    top = max(args.sparsities)
    print(f"\n## LeNet-300-100 on MNIST, {device}{' (QUICK mode)' if args.quick else ''}\n")
    print(markdown(report, list(methods)))
    print(f"\n## Wall time to sparsity {top}: LTR versus CTS-KL (one invocation, same machine)\n")
    print(ltr_versus_cts(report, top))
    print(f"\n## Every IMP level of the LTR run to sparsity {top} (seed {seeds[0]})\n")
    print(imp_curve(args.out, top, seeds[0]))
    print(f"\n{sum(finished)} of {len(jobs)} runs done ({time.perf_counter() - t0:.0f}s in this invocation); "
          f"CSV: {args.out / 'runs.csv'}, {args.out / 'summary.csv'}")
    for (method, _, sparsity, seed), ok in zip(jobs, finished, strict=True):
        if not ok:
            print(f"FAILED: {method} sparsity {sparsity} seed {seed} (log: "
                  f"{run_dir(args.out, method, sparsity, seed) / 'run.log'})")
    return 0 if all(finished) else 1

if __name__ == "__main__":
    sys.exit(main())
