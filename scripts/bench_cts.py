#!/usr/bin/env python
"""CTS benchmark on LeNet-300-100 / real MNIST.

Two parts, each printed as a markdown table (and saved under --out):

  accuracy  CTS-KL and CTS (task loss) against magnitude at the rewind point and random, at sparsity
            0.99 and 0.993, seeds 0 and 1, the same training budget for every method (the lenet_mnist
            preset: dense to the rewind point, then retraining to epoch 40). Accuracy after retraining,
            accuracy of the masked network before retraining, the objective values at the pruning point
            (reverse KL, forward KL, task loss of the hard mask), and the wall time of every stage.
  control   GradBalance's sparsity control: the expected density mean(sigmoid(theta)) at the end of a
            CTS-KL search, against the target d, for d = 0.1 and d = 0.00738 (= 0.8^22).
(The cost of a search epoch against a dense training epoch is measured by scripts/bench_perf.py.)

Every run goes through the CLI (`python -m ltsearch run ...`) into its own folder under --out (the same
folders as scripts/bench_baselines.py), so an interrupted benchmark resumes and finished runs are reused.

    python scripts/bench_cts.py --parts accuracy control
    python scripts/bench_cts.py --quick            # a few minutes: 2 epochs, 1 seed, a data subset
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_baselines import BASELINES, STAGES, run_dir  # noqa: E402
from benchlib import REPO, data_root, ensure_run, fmt_mean_std, markdown_table, save_rows  # noqa: E402

DATA = data_root()

# The same names, overrides and folders as scripts/bench_baselines.py, so both scripts share finished runs.
METHODS = {
    "cts_kl": ["pruner=cts_kl"],
    "cts": ["pruner=cts"],
    "magnitude_rewind": BASELINES["magnitude_rewind"],
    "random": BASELINES["random"],
}


def base_overrides(args: argparse.Namespace) -> list[str]:
    base = ["experiment=lenet_mnist", f"dataset.root={args.data}", STAGES, "runtime.progress=false"]
    if args.quick:
        base += ["train.epochs=3", "dataset.train_subset=6000", "dataset.test_subset=2000"]
    return base


def accuracy(args: argparse.Namespace) -> None:
    rows = []
    for sparsity in args.sparsities:
        for method, overrides in METHODS.items():
            results = [ensure_run(run_dir(args.out, method, sparsity, seed),
                                  [*base_overrides(args), *overrides, f"sparsity={sparsity}", f"seed={seed}"])
                       for seed in args.seeds]
            pp = [r["pruning_point"]["pruning_point"] for r in results]
            times = {stage: statistics.mean(r["wall_time"].get(stage, 0.0) for r in results)
                     for stage in ("search", "rewind", "retrain", "evaluate", "total")}
            rows.append({
                "method": method, "sparsity": sparsity, "seeds": len(results),
                "acc after retrain": fmt_mean_std([100 * r["test_acc"] for r in results]),
                "acc before retrain": fmt_mean_std([100 * p["test_acc"] for p in pp]),
                "reverse KL at pruning point": fmt_mean_std([p["objective"]["reverse_kl"] for p in pp], 3),
                "forward KL": fmt_mean_std([p["objective"]["forward_kl"] for p in pp], 3),
                "task loss": fmt_mean_std([p["objective"]["task"] for p in pp], 3),
                **{f"{k} s": f"{v:.1f}" for k, v in times.items()},
            })
    print(markdown_table(rows))
    save_rows(args.out / "accuracy.csv", rows)


def control(args: argparse.Namespace) -> None:
    rows = []
    for density in (0.1, 0.8**22):
        sparsity = 1 - density
        results = ensure_run(args.out / "control" / f"cts_kl_d{density:.5f}",
                             [*base_overrides(args), "pruner=cts_kl", f"sparsity={sparsity!r}",
                              "stages=[search]"], results_file="search/metrics.json")
        final = results["pruner"]["final"]
        expected = final["expected_density"]
        rows.append({"target d": f"{density:.5f}", "expected density": f"{expected:.5f}",
                     "ratio to d": f"{expected / density:.3f}",
                     "within [0.9d, 1.2d]": "yes" if 0.9 * density <= expected <= 1.2 * density else "NO",
                     "theta > 0 fraction": f"{final['density_theta_positive']:.5f}",
                     "lambda": f"{final['lambda']:.4g}", "search epochs": results["pruner"]["epochs"]})
    print(markdown_table(rows))
    save_rows(args.out / "control.csv", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["accuracy", "control"], choices=["accuracy", "control"])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_baselines",
                        help="shared with scripts/bench_baselines.py (same run folders)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.99, 0.993])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="3 epochs, one seed, data subsets")
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
        args.out = args.out.with_name(args.out.name + "_quick")
    for part in args.parts:
        print(f"\n## {part}\n", flush=True)
        globals()[part](args)


if __name__ == "__main__":
    main()
