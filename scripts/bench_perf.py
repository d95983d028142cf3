#!/usr/bin/env python
"""Performance benchmark, measured in one run on this machine (CPU: quote ratios, not times).

  mask     step time of a masked model over the same dense model, through the real training loop
           (LeNet-300-100 at batch 128, ResNet-20 at batch 128; 99% sparsity). Target: <= 1.05x. Also
           the time of the one operation a masked step adds (re-zeroing the pruned weights), timed alone:
           the epoch ratio on a shared 2-core VM moves by several percent between runs.
  search   one CTS-KL search epoch over one dense training epoch of the same model and data.
           Target: <= 1.6x (the paper's implied ratio). Also the first epoch of a fresh search (it
           computes the teacher-logit cache where the network allows one) and a 5-epoch search's mean.
  pipeline total cost of the CTS-KL pipeline to sparsity 0.993 over the LTR pipeline to 0.993 on
           LeNet-300-100 / MNIST, read from the baselines benchmark's runs (--runs): wall time and
           hardware-independent dense-epoch equivalents, with the accuracy of both. Target: 1/15 or less
           at equal or better accuracy.
  sweep    a 3-sparsity LTR sweep (0.9, 0.99, 0.993) with the artifact cache over the same sweep
           without it (MNIST-1D, a short schedule), wall time.

The timed parts alternate the two configurations in one process and report medians; the first round is
a warm-up.

    python scripts/bench_perf.py --parts mask search sweep pipeline --runs outputs/bench_baselines
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ensure_run, markdown_table, save_rows  # noqa: E402

from ltsearch.compose import compose  # noqa: E402
from ltsearch.data import build_data  # noqa: E402
from ltsearch.masking import attach_masks, prunable_weights, topk_masks  # noqa: E402
from ltsearch.models import build_model  # noqa: E402
from ltsearch.pruners import PruneContext  # noqa: E402
from ltsearch.pruners.cts import build_search  # noqa: E402
from ltsearch.rundir import ArtifactDir  # noqa: E402
from ltsearch.runtime import Runtime  # noqa: E402
from ltsearch.training.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    # name: (overrides, samples per timed epoch)
    "LeNet-300-100": (["model=lenet300100", "dataset=fake", "dataset.shape=[1,28,28]"], 128 * 60),
    "ResNet-20": (["model=resnet20", "dataset=fake", "dataset.shape=[3,32,32]"], 128 * 8),
}


def _setup(overrides: list[str], samples: int):
    cfg = compose(*overrides, f"dataset.train_size={samples}", "dataset.test_size=128", "train.batch_size=128",
                  "train.optimizer=sgd", "train.momentum=0.9", "train.weight_decay=1e-4", "train.lr=0.01",
                  "train.epochs=1000", "train.rewind_epoch=0", "pruner=cts_kl", "sparsity=0.99",
                  "runtime.progress=false")
    data = build_data(cfg.dataset)
    return cfg, data, Runtime.from_config(cfg.runtime)


def _trainer(cfg, data, runtime, scratch: Path, masked: bool) -> Trainer:
    model = build_model(cfg.model, data.input_shape, data.num_classes, 0)
    if masked:
        weights = prunable_weights(model, cfg.model.exclude)
        gen = torch.Generator().manual_seed(1)
        scores = {n: torch.rand(w.shape, generator=gen) for n, w in weights.items()}
        attach_masks(model, topk_masks(scores, int(0.01 * sum(w.numel() for w in weights.values()))))
    return Trainer(model=model, data=data, cfg=cfg.train, runtime=runtime, out=ArtifactDir(scratch).start(),
                   seed=0, stream="bench", start_epoch=0)


def _alternate(rounds: int, **jobs) -> dict[str, float]:
    """Median seconds of each job, the jobs run in turn, round after round (the first round discarded)."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for r in range(rounds + 1):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job(r)
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def mask(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name, (overrides, samples) in MODELS.items():
        cfg, data, runtime = _setup(overrides, samples)
        dense = _trainer(cfg, data, runtime, args.scratch / "dense", masked=False)
        masked = _trainer(cfg, data, runtime, args.scratch / "masked", masked=True)
        med = _alternate(args.rounds, dense=dense.train_epoch, masked=masked.train_epoch)
        steps = dense.steps_per_epoch
        # the only per-step work a masked model adds: re-zeroing the pruned weights after the update
        mask_us = 1e6 * _per_call(masked._apply_masks, 2000)
        rows.append({"model": name, "batch": 128, "steps timed": steps * args.rounds,
                     "dense step ms": f"{1000 * med['dense'] / steps:.2f}",
                     "masked step ms": f"{1000 * med['masked'] / steps:.2f}",
                     "masked / dense": f"{med['masked'] / med['dense']:.3f}",
                     "mask op us/step": f"{mask_us:.1f}",
                     "mask op / dense step": f"{mask_us / (1e6 * med['dense'] / steps):.2%}"})
    return rows


def _per_call(fn, calls: int) -> float:
    """Seconds per call of fn(), after a warm-up."""
    for _ in range(calls // 10):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def search(args: argparse.Namespace) -> list[dict]:
    """Steady-state search epochs against dense epochs, plus the first epoch of a fresh search, which also
    computes the teacher-logit cache when the network allows one (LeNet: yes; ResNet-20: no, BatchNorm)."""
    return [_search_row(args, name, overrides, samples) for name, (overrides, samples) in MODELS.items()]


def _search_row(args: argparse.Namespace, name: str, overrides: list[str], samples: int) -> dict:
    cfg, data, runtime = _setup(overrides, samples)
    dense = _trainer(cfg, data, runtime, args.scratch / "dense-s", masked=False)

    def fresh_search():
        teacher = build_model(cfg.model, data.input_shape, data.num_classes, 0)
        ctx = PruneContext(model=teacher, data=data, cfg=cfg, runtime=runtime,
                           out=ArtifactDir(args.scratch / "search").start(), seed=0, density=cfg.density)
        return build_search(ctx, cfg.pruner)

    concrete = fresh_search()
    firsts: list[float] = []

    def first_epoch(r: int) -> None:
        s = fresh_search()
        t0 = time.perf_counter()
        s.run_epoch(data, 128, 0, 0)
        firsts.append(time.perf_counter() - t0)

    med = _alternate(args.rounds, dense=dense.train_epoch, search=lambda r: concrete.run_epoch(data, 128, 0, r),
                     first=first_epoch)
    first = statistics.median(firsts[1:])
    epochs = 5  # a short search (1/8 of a 40-epoch schedule)
    short = (first + (epochs - 1) * med["search"]) / epochs
    return {"model": name, "objective": "reverse KL",
            "teacher cached": "yes" if concrete.cached_teacher is not None else "no (BN)",
            "dense epoch s": f"{med['dense']:.3f}", "search epoch s": f"{med['search']:.3f}",
            "search / dense": f"{med['search'] / med['dense']:.3f}",
            "first search epoch / dense": f"{first / med['dense']:.3f}",
            f"{epochs}-epoch search / {epochs} dense": f"{short / med['dense']:.3f}"}


def pipeline(args: argparse.Namespace) -> list[dict]:
    """CTS-KL vs LTR to 0.993 on LeNet-300-100 / MNIST, from finished runs of scripts/bench_baselines.py."""
    rows = []
    for seed in args.seeds:
        runs = {m: args.runs / "runs" / m / "sparsity_0.993" / f"seed_{seed}" / "evaluate" / "results.json"
                for m in ("cts_kl", "ltr")}
        if not all(p.exists() for p in runs.values()):
            print(f"  (seed {seed}: runs missing under {args.runs}; run scripts/bench_baselines.py first)")
            continue
        res = {m: json.loads(p.read_text()) for m, p in runs.items()}
        cost = {m: r["cost"]["total_with_reused"] for m, r in res.items()}
        rows.append({"seed": seed,
                     "CTS-KL acc": f"{100 * res['cts_kl']['test_acc']:.2f}", "LTR acc": f"{100 * res['ltr']['test_acc']:.2f}",
                     "CTS-KL epochs": f"{cost['cts_kl']['epochs']:.1f}", "LTR epochs": f"{cost['ltr']['epochs']:.1f}",
                     "cost ratio (epochs)": f"1/{cost['ltr']['epochs'] / cost['cts_kl']['epochs']:.1f}",
                     "CTS-KL wall s": f"{cost['cts_kl']['wall_time']:.0f}", "LTR wall s": f"{cost['ltr']['wall_time']:.0f}",
                     "wall ratio": f"1/{cost['ltr']['wall_time'] / cost['cts_kl']['wall_time']:.1f}"})
    return rows


def sweep(args: argparse.Namespace) -> list[dict]:
    base = ["pruner=ltr", "train.epochs=10", "train.batch_size=128", "train.rewind_epoch=1",
            "stages=[search,rewind,retrain,evaluate]", "runtime.progress=false"]
    rows = []
    for label, cache in (("without cache", "false"), ("with cache", "true")):
        root = args.scratch / f"sweep_{cache}"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        for sparsity in (0.9, 0.99, 0.993):
            ensure_run(root / f"s{sparsity}", [*base, f"sparsity={sparsity}", f"runtime.cache={cache}",
                                              f"runtime.cache_dir={root / 'cache'}"])
        rows.append({"sweep": f"LTR to 0.9, 0.99, 0.993 (MNIST-1D, 10 epochs), {label}",
                     "wall s": f"{time.perf_counter() - t0:.1f}"})
    rows.append({"sweep": "speed-up with the cache",
                 "wall s": f"{float(rows[0]['wall s']) / float(rows[1]['wall s']):.2f}x"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["mask", "search", "sweep", "pipeline"],
                        choices=["mask", "search", "sweep", "pipeline"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "bench_baselines")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_perf")
    parser.add_argument("--quick", action="store_true", help="2 timed rounds")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 2
    args.scratch = args.out / "scratch"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    for part in args.parts:
        print(f"\n## {part}\n", flush=True)
        rows = globals()[part](args)
        if rows:
            print(markdown_table(rows), flush=True)
            save_rows(args.out / f"{part}.csv", rows)


if __name__ == "__main__":
    main()
