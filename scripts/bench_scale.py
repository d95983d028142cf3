#!/usr/bin/env python
"""GPU benchmark of the paper-scale paths, prepared to run as one call on a lent GPU machine (also runs on
a CPU with --smoke, to check the script itself on tiny data).

  input     images per second of ResNet-50 dense training (batch 256, bf16, channels_last, cuDNN autotuning)
            from a generated folder of JPEGs of mixed sizes (160-500 px, ImageNet-like): streamed (decoded by
            DataLoader workers every epoch), decoded once into memory (`runtime.data_storage=memory`), and
            the in-memory tensor path (`Data`: 224 x 224 samples on the GPU, no decoding, flips on the GPU) as
            the ceiling. One warm-up epoch, then the median of --epochs timed epochs.
  ddp       one dense training epoch through the CLI (`stages=[search] pruner=magnitude`: the pretraining to
            the rewind point, pruner.when=rewind) with `torchrun --nproc_per_node=G` on the G GPUs of the machine and with one
            process, streaming the same folder; images per second and the speed-up. Needs 2+ GPUs.

    python scripts/bench_scale.py --out $OUT/scale                   # on the GPU machine
    python scripts/bench_scale.py --smoke --out /tmp/bench_scale     # CPU check of the script

The JPEG folder is generated on the machine (--images, default 6000; about 30 s). Every part appends a
markdown table to OUT/bench_scale.md as soon as it finishes, so a call cut short returns what it measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stream import make_image_folder  # noqa: E402
from benchlib import REPO, markdown_table, run_parts  # noqa: E402

from ltsearch.compose import compose  # noqa: E402
from ltsearch.context import RunContext  # noqa: E402
from ltsearch.rundir import ArtifactDir  # noqa: E402
from ltsearch.runtime import Runtime  # noqa: E402
from ltsearch.training.trainer import Trainer  # noqa: E402


def model_overrides(args: argparse.Namespace) -> list[str]:
    if args.smoke:  # a small ResNet of the same family on small crops, one thread per process
        return ["model=resnet18_imagenet", "train.batch_size=16", "dataset.image_size=32", "dataset.resize_size=36",
                "runtime.threads=1"]
    return ["model=resnet50", "train.batch_size=256"]


def report(args: argparse.Namespace, title: str, rows: list[dict]) -> None:
    text = f"## {title}\n\n{markdown_table(rows)}\n"
    print(text, flush=True)
    with open(args.out / "bench_scale.md", "a") as handle:
        handle.write(text + "\n")


def images_per_second(args: argparse.Namespace, label: str, overrides: list[str]) -> dict:
    cfg = compose("experiment=resnet50_imagenet", *model_overrides(args), "runtime.progress=false",
                  "runtime.deterministic=false", *overrides)
    scratch = args.out / "scratch" / label.replace(" ", "_")
    ctx = RunContext(cfg=cfg, run_dir=scratch, runtime=Runtime.from_config(cfg.runtime))
    t0 = time.perf_counter()
    data = ctx.data
    setup = time.perf_counter() - t0
    trainer = Trainer(model=ctx.new_model(), data=data, cfg=cfg.train, runtime=ctx.runtime,
                      out=ArtifactDir(scratch).start(), seed=0, stream="bench", start_epoch=0)
    rates = []
    for epoch in range(args.epochs + 1):
        record = trainer.train_epoch(epoch)  # ends with a host sync (the NaN check)
        if epoch:
            rates.append(record["samples"] / record["time"])
    return {"input": label, "images": data.train_size, "setup s": f"{setup:.1f}",
            "images / s": f"{statistics.median(rates):.0f}", "device": str(ctx.runtime.device)}


def input_part(args: argparse.Namespace) -> None:
    folder = [f"dataset.root={args.folder}", f"runtime.data_workers={args.workers}"]
    rows = [images_per_second(args, "JPEG folder, streamed", [*folder, "runtime.data_storage=stream"]),
            images_per_second(args, "JPEG folder, decoded in memory", [*folder, "runtime.data_storage=memory"])]
    size = 32 if args.smoke else 224
    rows.append(images_per_second(args, "tensors in memory (Data)", [
        "dataset=fake", f"dataset.shape=[3,{size},{size}]", f"dataset.train_size={rows[0]['images']}",
        "dataset.test_size=100", "dataset.num_classes=10", "dataset.augment=flip"]))
    report(args, f"ResNet-{'18 (smoke)' if args.smoke else '50'} dense training: input paths, "
                 f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}", rows)


def pretrain_rate(args: argparse.Namespace, name: str, launcher: list[str]) -> dict:
    run_dir = args.out / "ddp" / name
    overrides = ["experiment=resnet50_imagenet", *model_overrides(args), f"dataset.root={args.folder}",
                 "train.epochs=2", "train.rewind_epoch=1", "train.warmup_epochs=0", "train.milestones=[]",
                 "stages=[search]", "pruner=magnitude", "pruner.when=rewind", "runtime.progress=false", "runtime.cache=false",
                 "runtime.deterministic=false", f"runtime.data_workers={args.workers}", f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *launcher, "ltsearch", "run", *overrides], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"} if args.smoke else None)
    wall = time.perf_counter() - t0
    (args.out / f"ddp_{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}); see {args.out / f'ddp_{name}.log'}")
    epoch = json.loads((run_dir / "search" / "pretrain" / "metrics.json").read_text())[-1]
    return {"processes": name, "images": epoch["samples"], "epoch s": f"{epoch['time']:.1f}",
            "images / s": f"{epoch['samples'] / epoch['time']:.0f}", "command s": f"{wall:.0f}"}


def ddp_part(args: argparse.Namespace) -> None:
    gpus = torch.cuda.device_count()
    procs = 2 if args.smoke else gpus
    if procs < 2:
        report(args, "DDP", [{"result": f"not measured: {gpus} GPU (DDP needs 2 or more)"}])
        return
    one = pretrain_rate(args, "1", [])
    many = pretrain_rate(args, str(procs), ["torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                                            "-m"])
    many["speed-up"] = f"{float(many['images / s']) / float(one['images / s']):.2f}x"
    report(args, f"DDP, one dense epoch streamed from the JPEG folder ({'CPU, gloo' if args.smoke else 'NCCL'})",
           [one, many])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["input", "ddp"], choices=["input", "ddp"])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_scale")
    parser.add_argument("--images", type=int, default=6000, help="JPEGs to generate (one in ten for validation)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per input path")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers per process (-1: auto)")
    parser.add_argument("--smoke", action="store_true", help="tiny data and model: check the script on a CPU")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.epochs, args.workers = min(args.images, 100), 1, 1
    args.out.mkdir(parents=True, exist_ok=True)
    args.folder = args.out / "jpegs"
    if not (args.folder / "train").is_dir():
        t0 = time.perf_counter()
        make_image_folder(args.folder, args.images, classes=10,
                          sizes=(40, 80) if args.smoke else (160, 500))
        print(f"generated {args.images} JPEGs in {time.perf_counter() - t0:.0f}s", flush=True)
    print(f"torch {torch.__version__}, {torch.cuda.device_count()} CUDA device(s)", flush=True)
    return run_parts({part: functools.partial(globals()[f"{part}_part"], args) for part in args.parts})


if __name__ == "__main__":
    sys.exit(main())
