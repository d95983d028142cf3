#!/usr/bin/env python
"""CTS benchmark on LeNet-300-100 / real MNIST (issue 3).

Three parts, each printed as a markdown table (and saved under --out):

  accuracy  CTS-KL and CTS (task loss) against magnitude at the rewind point and random, at sparsity
            0.99 and 0.993, seeds 0 and 1, the same training budget for every method (the lenet_mnist
            preset: dense to the rewind point, then retraining to epoch 40). Accuracy after retraining,
            accuracy of the masked network before retraining, the objective values at the pruning point
            (reverse KL, forward KL, task loss of the hard mask), and the wall time of every stage.
  control   GradBalance's sparsity control: the expected density mean(sigmoid(theta)) at the end of a
            CTS-KL search, against the target d, for d = 0.1 and d = 0.00738 (= 0.8^22).
  cost      one CTS search epoch over one dense training epoch of the same model, measured alternately
            in one process (LeNet-300-100 on MNIST; add ResNet-20 with --resnet).

Every run goes through the CLI (`python -m ltsearch run ...`) into its own folder under --out, so an
interrupted benchmark resumes, and finished runs are reused.

    python scripts/bench_cts.py --parts accuracy control cost --out outputs/bench_cts
    python scripts/bench_cts.py --quick            # a few minutes: 2 epochs, 1 seed, a data subset
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ensure_run, fmt_mean_std, markdown_table, save_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets"

METHODS = {
    "cts_kl": ["pruner=cts_kl"],
    "cts": ["pruner=cts"],
    "magnitude@rewind": ["pruner=magnitude", "pruner.when=rewind"],
    "random@rewind": ["pruner=random", "pruner.when=rewind"],
}


def base_overrides(args: argparse.Namespace) -> list[str]:
    base = ["experiment=lenet_mnist", f"dataset.root={args.data}", "runtime.progress=false"]
    if args.quick:
        base += ["train.epochs=3", "dataset.train_subset=6000", "dataset.test_subset=2000"]
    return base


def accuracy(args: argparse.Namespace) -> None:
    rows = []
    for sparsity in args.sparsities:
        for method, overrides in METHODS.items():
            results = [ensure_run(args.out / "accuracy" / f"{method}_s{sparsity}_seed{seed}",
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


def cost(args: argparse.Namespace) -> None:
    """Median seconds of a dense training epoch and of a CTS search epoch, alternating in one process."""
    import torch

    from ltsearch.config import compose
    from ltsearch.pipeline import RunContext
    from ltsearch.pruners import PruneContext
    from ltsearch.pruners.cts import build_search
    from ltsearch.rundir import StageDir
    from ltsearch.runtime import Runtime
    from ltsearch.training.trainer import Trainer

    setups = [("LeNet-300-100 / MNIST", base_overrides(args))]
    if args.resnet:
        setups.append(("ResNet-20 / CIFAR-10 (JPEG), 5120 images", [
            "experiment=resnet20_cifar10", "dataset=cifar10_jpeg",
            f"dataset.root={args.data / 'cifar10-jpeg.tar.gz'}", "dataset.train_subset=5120",
            "train.batch_size=128", "runtime.progress=false"]))
    rows = []
    for name, overrides in setups:
        cfg = compose(*overrides, "pruner=cts_kl", "sparsity=0.99")
        scratch = args.out / "cost" / name.split()[0]
        ctx = RunContext(cfg=cfg, run_dir=scratch, runtime=Runtime.from_config(cfg.runtime))
        dense = ctx.new_model()
        trainer = Trainer(model=dense, data=ctx.data, cfg=cfg.train, runtime=ctx.runtime,
                          out=StageDir(scratch / "dense").start(), seed=0, key="cost", start_epoch=0)
        teacher = ctx.new_model()
        pctx = PruneContext(model=teacher, data=ctx.data, cfg=cfg, runtime=ctx.runtime,
                            out=StageDir(scratch / "search").start(), seed=0, density=cfg.density)
        search = build_search(pctx, cfg.pruner)
        batch = cfg.train.batch_size
        dense_times, search_times = [], []
        for epoch in range(args.cost_epochs + 1):  # the first pair warms up
            t0 = time.perf_counter()
            trainer.train_epoch(epoch)
            t1 = time.perf_counter()
            with torch.enable_grad():
                search.run_epoch(ctx.data, batch, 0, epoch)
            t2 = time.perf_counter()
            if epoch:
                dense_times.append(t1 - t0)
                search_times.append(t2 - t1)
        d, s = statistics.median(dense_times), statistics.median(search_times)
        rows.append({"model": name, "epochs timed": len(dense_times), "dense epoch s (median)": f"{d:.2f}",
                     "CTS-KL search epoch s (median)": f"{s:.2f}", "ratio search/dense": f"{s / d:.2f}",
                     "threads": torch.get_num_threads()})
    print(markdown_table(rows))
    save_rows(args.out / "cost.csv", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["accuracy", "control", "cost"],
                        choices=["accuracy", "control", "cost"])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_cts")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.99, 0.993])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--cost-epochs", type=int, default=3)
    parser.add_argument("--resnet", action="store_true", help="also time ResNet-20 on a CIFAR-10 (JPEG) subset")
    parser.add_argument("--quick", action="store_true", help="3 epochs, one seed, data subsets")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.cost_epochs = args.seeds[:1], 1
        args.out = args.out.with_name(args.out.name + "_quick")
    for part in args.parts:
        print(f"\n## {part}\n", flush=True)
        globals()[part](args)


if __name__ == "__main__":
    main()
