#!/usr/bin/env python
"""Benchmark of the sanity checks on LeNet-300-100 / real MNIST.

For each method (CTS-KL, LTR, SNIP, SynFlow) and seed, one run through
the CLI into `OUT/runs/<method>/sparsity_<s>/seed_<k>`:

    python -m ltsearch run experiment=lenet_mnist dataset.root=ROOT pruner=<option> sparsity=0.99 seed=<k> \
        stages=[search,rewind,retrain,sanity,evaluate] runtime.progress=false hydra.run.dir=<run dir>

The sanity stage retrains four variants of each ticket with exactly the ticket's budget: layerwise shuffle,
invert (the k lowest scores), reinitialise (masks found at init only; skipped for rewind-point masks: CTS-KL
and LTR) and random (per-layer densities at random positions on fresh weights). Verdict per seed: the ticket
beats the variant by more than sanity.margin (0.005 = 0.5 points); across seeds (ltsearch report): the mean
margin must exceed max(threshold, 2 * std / sqrt(n)). Expected (Frankle et al. 2021): SNIP and SynFlow fail
shuffle/reinit/random (their masks carry layerwise densities, not per-weight information), LTR and CTS pass.

The run directories use the layout of scripts/bench_baselines.py: `--out` pointing at a bench_baselines
folder adds the sanity stage to its finished runs (same config; the stage list may change on re-entry), so
the tickets are not trained twice. A finished run is reused, an unfinished one resumes.

Output: the sanity verdict table and the accuracy table (markdown); in OUT, as `ltsearch report` writes them:
summary_sanity.csv (per method and variant: margin mean +- std over seeds, bound, verdict),
summary_sanity_runs.csv (per seed), summary.csv, summary.txt and the plots (sanity_margins.png, ...).
Cost: every run retrains up to four more networks over the ticket's schedule (LeNet-300-100, 40 epochs).

Usage:
  python scripts/bench_sanity.py                                   # the benchmark: 40 epochs, seeds 0 1
  python scripts/bench_sanity.py --quick --out /tmp/bench_sanity  # verification: 2 epochs, 2000 images
  python scripts/bench_sanity.py --out outputs/bench_baselines     # reuse the baseline runs' tickets
Exit status 0 when every run finished, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_baselines import run_dir  # noqa: E402
from benchlib import REPO, data_root, ensure_run  # noqa: E402

from ltsearch.report import SEED_RULE, Report, build_report, write_report  # noqa: E402

DEFAULT_ROOT = data_root()
STAGES = "stages=[search,rewind,retrain,sanity,evaluate]"
METHODS = {"cts_kl": "pruner=cts_kl", "ltr": "pruner=ltr", "snip": "pruner=snip", "synflow": "pruner=synflow"}
QUICK = ["train.epochs=2", "dataset.train_subset=2000", "dataset.test_subset=2000"]


def pct(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}"


def verdict_table(report: Report, methods: list[str]) -> str:
    sanity = report.sanity
    if sanity.empty:
        return "(no sanity results)"
    order = {m: i for i, m in enumerate(methods)}
    lines = ["| method | variant | seeds | ticket acc % | variant acc % | margin (points) | bound | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in sanity.sort_values("method", key=lambda s: s.map(order), kind="stable").iterrows():
        if r["verdict"] == "skipped":
            lines.append(f"| {r['method']} | {r['variant']} | - | - | - | - | - | skipped: {r['skipped_reason']} |")
            continue
        margin = pct(r["margin_mean"]) + ("" if math.isnan(r["margin_std"]) else f" ± {pct(r['margin_std'])}")
        lines.append(f"| {r['method']} | {r['variant']} | {r['n']} | {pct(r['ticket_acc_mean'])} | "
                     f"{pct(r['variant_acc_mean'])} | {margin} | {pct(r['bound'])} | "
                     f"{r['verdict']} ({r['seeds_passed']} seeds) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_sanity")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_ROOT, help="folder holding MNIST/raw/")
    parser.add_argument("--methods", nargs="+", help=f"subset of {', '.join(METHODS)}")
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="verification: " + " ".join(QUICK))
    parser.add_argument("--device", default="auto", help="runtime.device of every run")
    parser.add_argument("--threads", type=int, default=0, help="runtime.threads of every run (0 = torch default)")
    args = parser.parse_args(argv)

    methods = dict(METHODS)
    if args.methods:
        unknown = [m for m in args.methods if m not in methods]
        if unknown:
            parser.error(f"unknown method(s) {unknown}; known: {', '.join(methods)}")
        methods = {m: methods[m] for m in args.methods}
    common = ["experiment=lenet_mnist", "train.rewind_epoch=1", f"dataset.root={args.data_root}", STAGES, "runtime.progress=false",
              f"runtime.device={args.device}", f"runtime.threads={args.threads}", *(QUICK if args.quick else [])]

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else (
        f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})")
    print(f"# bench_sanity: {', '.join(methods)} at sparsity {args.sparsity}, seeds {args.seeds}; {device}; "
          f"torch {torch.__version__}{'; QUICK mode' if args.quick else ''}", flush=True)

    t0 = time.perf_counter()
    jobs = [(m, o, seed) for seed in args.seeds for m, o in methods.items()]
    finished = []
    for method, override, seed in jobs:
        path = run_dir(args.out, method, args.sparsity, seed)
        print(f"{method} seed {seed}: {path}", flush=True)
        try:
            # reuse = the sanity verdicts exist (a bench_baselines run without them gets the stage added)
            ensure_run(path, [*common, override, f"sparsity={args.sparsity}", f"seed={seed}"],
                       results_file="sanity/sanity.json")
            finished.append(True)
        except RuntimeError as exc:
            print(f"  FAILED (log: {path / 'run.log'}):\n{exc}", flush=True)
            finished.append(False)
    dirs = [run_dir(args.out, m, args.sparsity, s) for m, _, s in jobs]
    report = build_report([d for d in dirs if d.exists()])
    written = write_report(report, csv=args.out / "summary.csv", plots_dir=args.out,
                           text=args.out / "summary.txt") if not report.runs.empty else []

    print(f"\n## Sanity checks, LeNet-300-100 on MNIST at sparsity {args.sparsity}, {device}"
          f"{' (QUICK mode)' if args.quick else ''}\n")
    print(verdict_table(report, list(methods)))
    print(f"\nRule: {SEED_RULE}.")
    if not report.summary.empty:
        print("\n| method | seeds | test acc % | acc before retraining % | total s | sanity s |\n|---|---|---|---|---|---|")
        for _, r in report.summary.iterrows():
            std = "" if math.isnan(r["test_acc_std"]) else f" ± {pct(r['test_acc_std'])}"
            print(f"| {r['method']} | {r['seeds']} | {pct(r['test_acc_mean'])}{std} | "
                  f"{pct(r['acc_before_retrain_mean'])} | {r['total_time_s']:.0f} | {r['time_sanity_s']:.0f} |")
    print(f"\n{sum(finished)} of {len(jobs)} runs done ({time.perf_counter() - t0:.0f}s in this invocation); "
          f"files: {', '.join(p.name for p in written)} in {args.out}")
    return 0 if all(finished) else 1


if __name__ == "__main__":
    sys.exit(main())
