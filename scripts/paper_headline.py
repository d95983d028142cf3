#!/usr/bin/env python
"""The CTS paper's headline run on a GPU: `experiment=resnet20_cifar10 pruner=cts_kl sparsity=0.993`, timed per
stage, with its test accuracy beside the paper's (74.0% in 7.9 minutes on four GPUs), for each seed.

    python scripts/paper_headline.py --root DATA_DIR/cifar10-jpeg.tar.gz --seeds 0 1 2 --out $OUT/headline
    python scripts/paper_headline.py --smoke --out /tmp/headline_smoke            # CPU check of the script

Each seed is one `ltsearch run` of the preset (the authors' network and protocol: dense training to the
rewind epoch 9, the CTS-KL search of the preset's length, retraining to epoch 160, evaluation; no sanity
checks, which the paper's time does not include) into OUT/seed_<s>, with the artifact cache off so nothing
is reused. A seed whose run folder already holds results is read, not rerun, and a run cut short is resumed
by the same command (its folder must survive: keep OUT on the machine between calls). After every seed the
table so far is written to OUT/paper_headline.md and OUT/paper_headline.json, so a call cut short returns
what it measured.

Per stage: the dense pretraining to the rewind point, the CTS search, retraining and evaluation (wall
seconds from the stages' own records), their sum (the paper's time counts pretraining + search +
retraining), and the test accuracy. Budget: about 9 + 151 dense epochs plus the search (160 epochs for the
preset's `long`, each about 1.4-1.6 dense epochs), so roughly 400 x the dense epoch time per seed; `--extra
pruner.length=half` measures the shorter search too. On a GPU machine without a package index, prepare it as
scripts/bench_gpu.py says (the CIFAR-10 archive and the missing wheels carried in git-ignored folders). Exit
status 0 when every seed finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, data_root, ensure_run, fmt_mean_std, markdown_table  # noqa: E402

PAPER_ACC = 74.0  # % test accuracy, ResNet-20 / CIFAR-10 at 99.3% sparsity (the paper's abstract)
PAPER_MIN = 7.9  # minutes, on four GPUs
SMOKE = ["dataset=fake", "dataset.shape=[3,32,32]", "dataset.train_size=512", "dataset.test_size=256",
         "train.epochs=4", "train.milestones=[2,3]", "train.rewind_epoch=1", "train.batch_size=128",
         "train.eval_batch_size=64", "model.width=4"]


def overrides(args: argparse.Namespace, seed: int) -> list[str]:
    data = SMOKE if args.smoke else ["dataset=cifar10_jpeg", f"dataset.root={args.root}"]
    return ["experiment=resnet20_cifar10", *data, "pruner=cts_kl", "sparsity=0.993", f"seed={seed}",
            "stages=[search,rewind,retrain,evaluate]", "runtime.cache=false", "runtime.progress=false",
            *args.runtime, *args.extra]


def stage_seconds(run_dir: Path, name: str) -> float:
    done = run_dir / name / "DONE.json"
    return float(json.loads(done.read_text())["wall_time"]) if done.exists() else 0.0


def row(seed: int, run_dir: Path, res: dict[str, Any], command_s: float) -> dict[str, Any]:
    times = res["wall_time"]
    pretrain = stage_seconds(run_dir, "search/pretrain")
    cfg = res["config"]
    search_epochs = res["pruning_point"]["pruner"]["epochs"]
    ticket = times["search"] + times.get("rewind", 0.0) + times["retrain"]
    return {
        "seed": seed, "test acc %": round(100 * res["test_acc"], 2),
        "acc before retraining %": round(100 * res["pruning_point"]["pruning_point"]["test_acc"], 2),
        "pretrain s": round(pretrain, 1), "search s": round(times["search"] - pretrain, 1),
        "search epochs": search_epochs, "retrain s": round(times["retrain"], 1),
        "evaluate s": round(times["evaluate"], 1), "ticket min": round(ticket / 60, 2),
        "command s": round(command_s, 1), "kept": res["density"]["measured_kept"],
        "of": res["density"]["prunable"], "eval batch": cfg["train"]["eval_batch_size"],
        "length": cfg["pruner"]["length"],
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    accs = [r["test acc %"] for r in rows]
    mins = [r["ticket min"] for r in rows]
    return {"seeds": len(rows), "test acc %": fmt_mean_std(accs), "paper %": PAPER_ACC,
            "ticket min": fmt_mean_std(mins), "paper min (4 GPUs)": PAPER_MIN,
            "difference, points": f"{statistics.mean(accs) - PAPER_ACC:+.2f}"}


def write(args: argparse.Namespace, device: str, rows: list[dict[str, Any]]) -> None:
    title = "CTS-KL, ResNet-20 / CIFAR-10, sparsity 0.993 (experiment=resnet20_cifar10)"
    text = (f"## {title}{' (smoke)' if args.smoke else ''}\n\n{device}, torch {torch.__version__}; command per "
            f"seed: `ltsearch run {' '.join(overrides(args, 0)).replace('seed=0', 'seed=S')}`\n\n"
            f"{markdown_table(rows)}\n\n{markdown_table([summary(rows)])}\n")
    (args.out / "paper_headline.md").write_text(text)
    (args.out / "paper_headline.json").write_text(json.dumps({"device": device, "rows": rows,
                                                               "summary": summary(rows)}, indent=1) + "\n")
    print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(data_root() / "cifar10-jpeg.tar.gz"))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "paper_headline")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runtime", nargs="*", default=["runtime.deterministic=false"],
                        help="runtime overrides of every run (default: cuDNN autotuning, as the authors)")
    parser.add_argument("--extra", nargs="*", default=[], help="further overrides, e.g. pruner.length=half")
    parser.add_argument("--smoke", action="store_true", help="tiny fake data: check the script on a CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no CUDA device)"
    rows: list[dict[str, Any]] = []
    failed = 0
    for seed in args.seeds:
        run_dir = args.out / f"seed_{seed}"
        t0 = time.perf_counter()
        try:
            res = ensure_run(run_dir, overrides(args, seed))
        except RuntimeError as exc:
            print(f"seed {seed}: FAILED: {exc}", flush=True)
            failed += 1
            continue
        rows.append(row(seed, run_dir, res, time.perf_counter() - t0))
        write(args, device, rows)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
