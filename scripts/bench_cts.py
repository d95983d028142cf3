#!/usr/bin/env python
"""CTS benchmark on LeNet-300-100 / real MNIST (and the quickstart's MNIST-1D for the pruning point).

Parts, each printed as a markdown table (and saved as CSV under --out):

  lengths   CTS (task loss) and CTS-KL at sparsity 0.99 and 0.993, seeds 0 and 1, search length short /
            half / long (int(1/8, 1/2, 1 x 40) = 5 / 20 / 40 search epochs), the lenet_mnist preset (dense
            to the rewind point, pinned to epoch 1 as when these tables were first measured (the preset
            now rewinds to epoch 5, following the point part), then retraining to epoch 40); CTS-KL on the quickstart (MNIST-1D)
            likewise. Accuracy after retraining, accuracy of the hard mask before retraining, search and
            total wall time, compute in dense epochs.
  objectives  every CTS objective at sparsity 0.99 (short search, seeds 0 and 1).
  point     where to search: CTS-KL at 0.99 and 0.993 with the search at initialisation and at rewind
            epochs 1, 2 and 5, with the sanity stage (margins of the ticket over shuffle, invert and random
            tickets; reinit for the masks found at init), on LeNet-300-100 / MNIST and on the quickstart
            (MNIST-1D).
  control   GradBalance's sparsity control: the expected density mean(sigmoid(theta)) at the end of a
            CTS-KL search, against the target d, for d = 0.1 and d = 0.00738 (= 0.8^22).

Every run goes through the CLI (`python -m ltsearch run ...`) into its own folder under --out, so an
interrupted benchmark resumes and finished runs are reused (the artifact cache shares dense pretraining).

    python scripts/bench_cts.py --parts lengths objectives point control
    python scripts/bench_cts.py --quick            # minutes: 3 epochs, 1 seed, data subsets
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, data_root, ensure_run, fmt_mean_std, markdown_table, save_rows  # noqa: E402

from ltsearch.cost import ticket_cost  # noqa: E402
from ltsearch.objectives import OBJECTIVES  # noqa: E402

NO_SANITY = "stages=[search,rewind,retrain,evaluate]"
WITH_SANITY = "stages=[search,rewind,retrain,sanity,evaluate]"
METHODS = {"cts": "pruner=cts", "cts_kl": "pruner=cts_kl"}


def lenet(args: argparse.Namespace) -> list[str]:
    base = ["experiment=lenet_mnist", "train.rewind_epoch=1", f"dataset.root={args.data}",
            "runtime.progress=false", f"runtime.threads={args.threads}"]
    if args.quick:
        base += ["train.epochs=3", "dataset.train_subset=6000", "dataset.test_subset=2000"]
    return base


def quickstart(args: argparse.Namespace) -> list[str]:
    return ["runtime.progress=false", f"runtime.threads={args.threads}", *(["train.epochs=4"] if args.quick else [])]


def run(args: argparse.Namespace, folder: str, overrides: list[str], **kwargs: Any) -> dict[str, Any]:
    return ensure_run(args.out / "runs" / folder, overrides, **kwargs)


def before(results: dict[str, Any]) -> dict[str, Any]:
    return results["pruning_point"]["pruning_point"]


def summary_row(results: list[dict[str, Any]]) -> dict[str, str]:
    """Accuracy after and before retraining (mean ± std over seeds), wall times and compute."""
    mean = lambda key: statistics.mean(r["wall_time"].get(key, 0.0) for r in results)  # noqa: E731
    return {
        "seeds": str(len(results)),
        "acc after retrain %": fmt_mean_std([100 * r["test_acc"] for r in results]),
        "acc before retrain %": fmt_mean_std([100 * before(r)["test_acc"] for r in results]),
        "search s": f"{mean('search'):.0f}",
        "total s": f"{mean('total'):.0f}",
        # the ticket's compute (every stage but sanity, reused upstream work included)
        "dense epochs": f"{statistics.mean(ticket_cost(r['cost'])['epochs'] for r in results):.1f}",
    }


def lengths(args: argparse.Namespace) -> None:
    rows = []
    setups = (("LeNet-300-100 / MNIST", "lenet", lenet(args), METHODS),
              ("quickstart / MNIST-1D", "quickstart", quickstart(args), {"cts_kl": METHODS["cts_kl"]}))
    for setup, tag, base, methods in setups:
        for sparsity in args.sparsities:
            for method, option in methods.items():
                for length in ("short", "half", "long"):
                    prefix = "" if tag == "lenet" else f"{tag}_"
                    results = [run(args, f"lengths/{prefix}{method}_{length}_{sparsity}_s{seed}",
                                   [*base, option, f"pruner.length={length}", f"sparsity={sparsity}",
                                    f"seed={seed}", NO_SANITY]) for seed in args.seeds]
                    rows.append({"setup": setup, "method": method, "sparsity": str(sparsity), "length": length,
                                 "search epochs": str(results[0]["pruning_point"]["pruner"]["epochs"]),
                                 **summary_row(results)})
    print(markdown_table(rows))
    save_rows(args.out / "lengths.csv", rows)


def objectives(args: argparse.Namespace) -> None:
    rows = []
    for name, cls in OBJECTIVES.items():
        results = [run(args, f"objectives/{name}_s{seed}",
                       [*lenet(args), "pruner=cts", f"objective={name}", "sparsity=0.99", f"seed={seed}",
                        NO_SANITY]) for seed in args.seeds]
        final = [r["pruning_point"]["pruner"]["final"] for r in results]
        rows.append({"objective": name, "scale": f"{cls.scale:g}", **summary_row(results),
                     "objective at the end": fmt_mean_std([f["objective"] for f in final], 4),
                     "expected density": fmt_mean_std([f["expected_density"] for f in final], 5)})
    print(markdown_table(rows))
    save_rows(args.out / "objectives.csv", rows)


POINTS = {"init": ["pruner.when=init"], "rewind 1": ["pruner.when=rewind", "train.rewind_epoch=1"],
          "rewind 2": ["pruner.when=rewind", "train.rewind_epoch=2"],
          "rewind 5": ["pruner.when=rewind", "train.rewind_epoch=5"]}


def margins(results: list[dict[str, Any]], variant: str) -> str:
    values = [r["sanity"]["variants"][variant]["margin"] for r in results]
    if any(v is None for v in values):
        return "skipped"
    return fmt_mean_std([100 * v for v in values])


def point(args: argparse.Namespace) -> None:
    rows = []
    for setup, base in (("LeNet-300-100 / MNIST", lenet(args)), ("quickstart / MNIST-1D", quickstart(args))):
        for sparsity in args.sparsities:
            for where, overrides in POINTS.items():
                sets_rewind = any(o.startswith("train.rewind_epoch=") for o in overrides)
                common = [o for o in base if not (sets_rewind and o.startswith("train.rewind_epoch="))]
                tag = "lenet" if setup.startswith("LeNet") else "quickstart"
                results = [run(args, f"point/{tag}_{where.replace(' ', '')}_{sparsity}_s{seed}",
                               [*common, "pruner=cts_kl", *overrides, f"sparsity={sparsity}", f"seed={seed}",
                                WITH_SANITY]) for seed in args.seeds]
                rows.append({"setup": setup, "sparsity": str(sparsity), "search at": where,
                             **{k: v for k, v in summary_row(results).items() if k not in ("search s", "total s")},
                             **{f"margin over {v}": margins(results, v)
                                for v in ("shuffle", "invert", "reinit", "random")}})
    print(markdown_table(rows))
    save_rows(args.out / "point.csv", rows)


def control(args: argparse.Namespace) -> None:
    rows = []
    for density in (0.1, 0.8**22):
        sparsity = 1 - density
        results = run(args, f"control/cts_kl_d{density:.5f}",
                      [*lenet(args), "pruner=cts_kl", f"sparsity={sparsity!r}", "stages=[search]"],
                      results_file="search/metrics.json")
        final = results["pruner"]["final"]
        expected = final["expected_density"]
        rows.append({"target d": f"{density:.5f}", "expected density": f"{expected:.5f}",
                     "ratio to d": f"{expected / density:.3f}",
                     "within [0.9d, 1.2d]": "yes" if 0.9 * density <= expected <= 1.2 * density else "NO",
                     "theta > 0 fraction": f"{final['density_theta_positive']:.5f}",
                     "lambda": f"{final['lambda']:.4g}", "search epochs": str(results["pruner"]["epochs"])})
    print(markdown_table(rows))
    save_rows(args.out / "control.csv", rows)


PARTS = {"lengths": lengths, "objectives": objectives, "point": point, "control": control}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_cts")
    parser.add_argument("--data", type=Path, default=data_root())
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.99, 0.993])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=0, help="runtime.threads of every run (0: torch's default; "
                        "1 keeps runs comparable on a machine shared with other jobs)")
    parser.add_argument("--quick", action="store_true", help="3 epochs, one seed, data subsets")
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
        args.out = args.out.with_name(args.out.name + "_quick")
    for part in args.parts:
        print(f"\n## {part}\n", flush=True)
        PARTS[part](args)


if __name__ == "__main__":
    main()
