#!/usr/bin/env python
"""The paper presets on the CPU: a short CIFAR-10 run of the CTS authors' ResNet-20 (experiment=resnet20_cifar10)
through CTS-KL, retraining and the sanity checks, beside open_lth's setting (experiment=resnet20_cifar10_openlth)
and the network `experiment=resnet20_cifar10` built before the authors' options existed (1x1 shortcuts,
gamma 1, running statistics, zero biases), on a subset of the CIFAR-10 JPEG archive and a few epochs. Then the
retrained paper ticket is evaluated in batches of several sizes: with batch statistics its accuracy depends
on them, which is why the preset states train.eval_batch_size=128. First, each preset's network at
initialisation: prunable weights against the authors' counts, and its BatchNorm weights.

    python scripts/bench_paper_presets.py                       # 2500 / 1000 images, 4 epochs, seed 0
    python scripts/bench_paper_presets.py --quick --out /tmp/bpp   # a check of the script (minutes)
    python scripts/bench_paper_presets.py --networks-only          # the networks table only

Runs go through the CLI into OUT/<name> (a finished run is read, an unfinished one resumes); the tables are
printed as markdown. A benchmark of the code path on a CPU, not of the paper's accuracy: 4 epochs on 5% of
CIFAR-10 are far from the paper's 160 on all of it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, data_root, ensure_run, markdown_table  # noqa: E402

import ltsearch  # noqa: E402
from ltsearch.compose import compose  # noqa: E402
from ltsearch.context import RunContext  # noqa: E402
from ltsearch.masking import prunable_modules  # noqa: E402
from ltsearch.models import build_model  # noqa: E402
from ltsearch.runtime import Runtime  # noqa: E402
from ltsearch.training.evaluate import evaluate  # noqa: E402

AUTHORS_COUNTS = {"resnet20_cifar10": 291_376, "vgg16_cifar10": 14_710_464, "resnet50_imagenet": 25_502_912}
NETWORKS = {  # preset -> (input shape the network is built for, classes)
    "resnet20_cifar10": ((3, 32, 32), 10), "resnet20_cifar10_openlth": ((3, 32, 32), 10),
    "vgg16_cifar10": ((3, 32, 32), 10), "vgg16_cifar10_openlth": ((3, 32, 32), 10),
    "resnet50_imagenet": ((3, 64, 64), 1000), "quickstart": ((1, 40), 10),
}
OLD_NETWORK = ["model=resnet20", "model.bn_init=ones", "model.bn_stats=running", "model.bias_init=zeros",
               "train.eval_batch_size=1000"]
PRESETS = {  # name -> overrides on top of the shared ones
    "paper": ["experiment=resnet20_cifar10"],
    "openlth": ["experiment=resnet20_cifar10_openlth"],
    "paper_protocol_old_network": ["experiment=resnet20_cifar10", *OLD_NETWORK],
}


def networks() -> list[dict]:
    """Each preset's network at initialisation (seed 0): prunable weights against the authors' counts, and
    the BatchNorm weights (gamma) and biases (beta) it starts from."""
    rows = []
    for preset, (shape, classes) in NETWORKS.items():
        cfg = compose(f"experiment={preset}", "dataset.root=/data")
        model = build_model(cfg.model, shape, classes, seed=0)
        prunable = sum(m.weight.numel() for m in prunable_modules(model, cfg.model.exclude).values())
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        gamma = torch.cat([m.weight.detach() for m in norms])
        beta = torch.cat([m.bias.detach() for m in norms])
        rows.append({"preset": preset, "model": f"{cfg.model.name} {cfg.model.depth or ''}".strip(),
                     "prunable": f"{prunable:,}", "authors'": f"{AUTHORS_COUNTS[preset]:,}"
                     if preset in AUTHORS_COUNTS else "", "BN channels": gamma.numel(),
                     "gamma mean": f"{gamma.mean():.4f}", "gamma std": f"{gamma.std():.4f}",
                     "gamma min / max": f"{gamma.min():.4f} / {gamma.max():.4f}",
                     "max abs beta": f"{beta.abs().max():.1g}",
                     "running buffers": sum("running" in k for k in model.state_dict())})
    return rows


def shared(args: argparse.Namespace) -> list[str]:
    milestones = f"[{args.epochs - 1}]"
    return ["dataset=cifar10_jpeg", f"dataset.root={args.root}", f"dataset.train_subset={args.train}",
            f"dataset.test_subset={args.test}", f"train.epochs={args.epochs}", "train.rewind_epoch=1",
            f"train.milestones={milestones}", "pruner=cts_kl", f"sparsity={args.sparsity}", f"seed={args.seed}",
            "sanity.variants=[shuffle,invert,random]", "runtime.progress=false", f"runtime.threads={args.threads}"]


def row(name: str, res: dict) -> dict:
    cfg, times = res["config"], res["wall_time"]
    sanity = (res.get("sanity") or {}).get("variants", {})
    margins = ", ".join(f"{v} {100 * s['margin']:+.1f}" for v, s in sanity.items() if s.get("margin") is not None)
    return {"run": name, "shortcut": cfg["model"]["shortcut"], "BN init": cfg["model"]["bn_init"],
            "BN stats": cfg["model"]["bn_stats"], "batch": cfg["train"]["batch_size"],
            "eval batch": cfg["train"]["eval_batch_size"], "prunable": res["density"]["prunable"],
            "kept": res["density"]["measured_kept"], "search epochs": res["pruning_point"]["pruner"]["epochs"],
            "before retraining %": f"{100 * res['pruning_point']['pruning_point']['test_acc']:.1f}",
            "test acc %": f"{100 * res['test_acc']:.1f}", "sanity margins (points)": margins,
            "ticket s": f"{times['ticket']:.0f}", "sanity s": f"{times.get('sanity', 0):.0f}"}


def eval_batches(run_dir: Path, sizes: list[int]) -> list[dict]:
    """The retrained ticket of a run, evaluated on its test split in batches of each size."""
    cfg = compose(*json.loads((run_dir / "run.json").read_text())["overrides"])
    ctx = RunContext(cfg=cfg, run_dir=run_dir, runtime=Runtime.from_config(cfg.runtime))
    net = ctx.runtime.place(ltsearch.load_ticket(run_dir, weights="trained"))
    return [{"eval batch": n, "test acc %": f"{100 * evaluate(net, ctx.data, ctx.runtime, 'test', n)['acc']:.2f}"}
            for n in sizes]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(data_root() / "cifar10-jpeg.tar.gz"))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_paper_presets")
    parser.add_argument("--train", type=int, default=2500, help="training images (dataset.train_subset)")
    parser.add_argument("--test", type=int, default=1000, help="test images (dataset.test_subset)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1000 / 500 images, 2 epochs: check the script")
    parser.add_argument("--networks-only", action="store_true", help="the networks table only (seconds)")
    args = parser.parse_args()
    print(markdown_table(networks()) + "\n", flush=True)
    if args.networks_only:
        return 0
    if args.quick:
        args.train, args.test, args.epochs = 1000, 500, 2
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads; shared overrides: "
          f"{' '.join(shared(args))}\n", flush=True)
    rows = []
    for name, extra in PRESETS.items():
        res = ensure_run(args.out / name, [*extra, *shared(args)])
        rows.append(row(name, res))
    print(markdown_table(rows) + "\n")
    print(markdown_table(eval_batches(args.out / "paper", [32, 128, 512, 1000])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
