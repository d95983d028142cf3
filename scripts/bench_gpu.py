#!/usr/bin/env python
"""GPU benchmark, prepared to run as one call on a lent GPU machine (also runs on a CPU with
--smoke, to check the script itself on tiny fake data).

  epoch     seconds per dense training epoch of ResNet-20 on CIFAR-10 (JPEG), the paper's batch 512, in
            the runtime variants a user can pick: the default (bf16 autocast, channels_last,
            deterministic algorithms), without deterministic algorithms (cuDNN autotuning, TF32), fp32,
            and with torch.compile. One warm-up epoch, then the median of --epochs timed epochs.
  pipeline  wall time and accuracy of the full CTS-KL pipeline to sparsity 0.993 through the CLI
            (dense pretraining to the rewind point 9, the search, retraining to epoch 160, evaluation),
            with the artifact cache off so nothing is reused. Target: under 4 minutes on one GPU (the
            paper: 7.9 minutes on four).
  bf16      scripts/check_cts_bf16.py: does bf16 autocast in the search select the fp32 mask up to seed
            noise?

    python scripts/bench_gpu.py --root DATA_DIR/cifar10-jpeg.tar.gz --out $OUT/gpu
    python scripts/bench_gpu.py --smoke --out /tmp/bench_gpu_smoke          # CPU check of the script

On a GPU machine without a package index: copy DATA_DIR/cifar10-jpeg.tar.gz and the
wheels the machine lacks (hydra-core, omegaconf, antlr4-python3-runtime, mnist1d) into git-ignored folders
named in `carry`, install the wheels, then run this script once with a timeout that leaves room for a
rerun. Budget: the pipeline trains 9 + 151 dense epochs and searches 160 (the preset's `long` search; 1.4-1.6
dense epochs each), so it takes about 400 x the "s / epoch" of the epoch part (`--runtime pruner.length=short`:
about 190 x); at over 1.5 s per epoch it does not fit one 10-minute
call together with the other parts, so run `--parts epoch --epochs 2` first or the pipeline alone.

Every part prints a markdown table as soon as it finishes and appends it to OUT/bench_gpu.md, so a call
cut short still returns what it measured. Exit status 0 when every selected part ran.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, data_root, markdown_table, run_parts  # noqa: E402

from ltsearch.compose import compose  # noqa: E402
from ltsearch.context import RunContext  # noqa: E402
from ltsearch.paths import results_file  # noqa: E402
from ltsearch.rundir import ArtifactDir  # noqa: E402
from ltsearch.runtime import Runtime  # noqa: E402
from ltsearch.training.trainer import Trainer  # noqa: E402

SMOKE = ["dataset=fake", "dataset.shape=[3,32,32]", "dataset.train_size=512", "dataset.test_size=128",
         "train.epochs=4", "train.milestones=[2,3]", "train.rewind_epoch=1", "train.batch_size=128",
         "model.width=4"]
VARIANTS = {  # label -> runtime overrides (on top of the defaults)
    "defaults": [],
    "runtime.deterministic=false": ["runtime.deterministic=false"],
    "fp32, deterministic=false": ["runtime.precision=fp32", "runtime.deterministic=false"],
    "compile, deterministic=false": ["runtime.compile=true", "runtime.deterministic=false"],
}


def base_overrides(args: argparse.Namespace) -> list[str]:
    if args.smoke:
        return ["experiment=resnet20_cifar10", *SMOKE]
    return ["experiment=resnet20_cifar10", "dataset=cifar10_jpeg", f"dataset.root={args.root}"]


def report(args: argparse.Namespace, title: str, rows: list[dict]) -> None:
    text = f"## {title}\n\n{markdown_table(rows)}\n"
    print(text, flush=True)
    with open(args.out / "bench_gpu.md", "a") as handle:
        handle.write(text + "\n")


def epoch(args: argparse.Namespace) -> None:
    rows = []
    for label, extra in VARIANTS.items():
        cfg = compose(*base_overrides(args), "runtime.progress=false", *extra)
        ctx = RunContext(cfg=cfg, run_dir=args.out / "scratch", runtime=Runtime.from_config(cfg.runtime))
        trainer = Trainer(model=ctx.new_model(), data=ctx.data, cfg=cfg.train, runtime=ctx.runtime,
                          out=ArtifactDir(args.out / "scratch" / label.split()[0].strip(",")).start(), seed=0,
                          stream="bench", start_epoch=0)
        times = []
        for e in range(args.epochs + 1):
            t0 = time.perf_counter()
            record = trainer.train_epoch(e)  # ends with a host sync (the NaN check)
            if e:
                times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        rt = ctx.runtime
        rows.append({"runtime": label, "device": str(rt.device), "bf16": rt.bf16, "channels_last": rt.channels_last,
                     "compile": rt.compile, "data on": str(ctx.data.device),
                     "batch": cfg.train.batch_size, "epochs timed": len(times), "s / epoch": f"{sec:.2f}",
                     "images / s": f"{record['samples'] / sec:.0f}",
                     "160 epochs (min)": f"{160 * sec / 60:.1f}"})
        del trainer, ctx
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report(args, "Dense epoch, ResNet-20 / CIFAR-10, batch 512" + (" (smoke)" if args.smoke else ""), rows)


def pipeline(args: argparse.Namespace) -> None:
    run_dir = args.out / "pipeline"
    overrides = [*base_overrides(args), "pruner=cts_kl", "sparsity=0.993",
                 "stages=[search,rewind,retrain,evaluate]", "runtime.progress=false", "runtime.cache=false",
                 *args.runtime, f"hydra.run.dir={run_dir}"]
    print("  " + " ".join(overrides), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ltsearch", "run", *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (args.out / "pipeline.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"the pipeline failed ({proc.returncode}); see {args.out / 'pipeline.log'}")
    res = json.loads(results_file(run_dir).read_text())
    stages = res["wall_time"]
    report(args, "CTS-KL pipeline to 0.993, one GPU" + (" (smoke)" if args.smoke else ""), [{
        "runtime": " ".join(args.runtime) or "defaults", "test acc %": f"{100 * res['test_acc']:.2f}",
        "acc before retraining %": f"{100 * res['pruning_point']['pruning_point']['test_acc']:.2f}",
        "search s (pretrain + CTS)": f"{stages['search']:.0f}", "retrain s": f"{stages['retrain']:.0f}",
        "pipeline s": f"{stages['total']:.0f}", "command s (with startup, data decode)": f"{wall:.0f}",
        "dense epochs": f"{res['cost']['total_with_reused']['epochs']:.1f}",
        "under 4 min": "yes" if stages["total"] < 240 else "no"}])


def bf16(args: argparse.Namespace) -> None:
    cmd = [sys.executable, str(REPO / "scripts" / "check_cts_bf16.py"), *base_overrides(args), "sparsity=0.993",
           f"pruner.epochs={args.bf16_epochs}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    report(args, "bf16 autocast in the CTS search", [{"result": lines[-1] if lines else "(no output)",
                                                       "exit": proc.returncode}])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["epoch", "pipeline", "bf16"],
                        choices=["epoch", "pipeline", "bf16"])
    parser.add_argument("--root", default=str(data_root() / "cifar10-jpeg.tar.gz"))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_gpu")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per runtime variant")
    parser.add_argument("--runtime", nargs="*", default=["runtime.deterministic=false"],
                        help="runtime overrides of the pipeline run")
    parser.add_argument("--bf16-epochs", type=int, default=5, help="search epochs of the bf16 check")
    parser.add_argument("--smoke", action="store_true", help="tiny fake data: check the script on a CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"torch {torch.__version__}, {gpu}", flush=True)
    if "bf16" in args.parts and not torch.cuda.is_available():
        print("(bf16: skipped, needs CUDA)")
    parts = [p for p in args.parts if p != "bf16" or torch.cuda.is_available()]
    return run_parts({part: functools.partial(globals()[part], args) for part in parts})


if __name__ == "__main__":
    sys.exit(main())
