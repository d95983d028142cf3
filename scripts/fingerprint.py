"""Fingerprint the numbers a set of runs produces, to show that a refactoring changed no result.

Runs a fixed list of configurations through the CLI (`python -m ltsearch run ...`, each in its own folder,
cache off) and prints, per run, the SHA-256 of every mask and score tensor, the final test accuracy, the
accuracy before retraining and every sanity accuracy. Run it before and after a change with the same
arguments and compare the two JSON files (`--compare A B`): identical files mean bit-identical masks and
identical accuracies on this machine.

    python scripts/fingerprint.py --out outputs/fp_before --json before.json           # the full set
    python scripts/fingerprint.py --out outputs/fp_after --json after.json
    python scripts/fingerprint.py --compare before.json after.json
    python scripts/fingerprint.py --quick ...                                          # tiny runs only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from benchlib import data_root

TINY = ["dataset=fake", "train=tiny", "model=mlp1d", "model.hidden=[32,16]", "dataset.shape=[1,40]",
        "sparsity=0.9"]
# name -> overrides; the tiny runs cover every pruner and CTS option, the two real ones the README's setups
RUNS: dict[str, list[str]] = {
    "tiny_cts_kl": [*TINY, "pruner=cts_kl"],
    "tiny_cts_task": [*TINY, "pruner=cts"],
    "tiny_cts_fkl_init": [*TINY, "pruner=cts", "objective=forward_kl", "pruner.when=init"],
    "tiny_cts_lagrange": [*TINY, "pruner=cts", "pruner.control=lagrange", "pruner.epochs=2"],
    "tiny_ltr": [*TINY, "pruner=ltr", "sparsity=0.6"],
    "tiny_imp_layerwise": [*TINY, "pruner=imp", "pruner.layerwise=true", "sparsity=0.6"],
    "tiny_snip": [*TINY, "pruner=snip"],
    "tiny_grasp": [*TINY, "pruner=grasp"],
    "tiny_synflow": [*TINY, "pruner=synflow", "pruner.rounds=10"],
    "tiny_magnitude": [*TINY, "pruner=magnitude"],
    "tiny_random": [*TINY, "pruner=random"],
    "tiny_dense": [*TINY, "pruner=dense", "stages=[search,rewind,retrain,evaluate]"],
    "tiny_resnet_cts_kl": ["dataset=fake", "train=tiny", "model=resnet20", "dataset.train_size=128",
                           "dataset.test_size=64", "sparsity=0.9", "pruner=cts_kl", "pruner.epochs=1"],
}
REAL: dict[str, list[str]] = {
    "quickstart": [],
    "lenet_mnist_cts_kl": ["experiment=lenet_mnist", "train.rewind_epoch=1", f"dataset.root={data_root()}", "pruner=cts_kl",
                           "sparsity=0.99"],
}


def tensor_digest(obj: Any) -> dict[str, str]:
    """name -> SHA-256 of the tensor's bytes (dtype and shape included)."""
    out = {}
    for name, t in sorted(obj.items()):
        t = t.detach().cpu().contiguous()
        h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        out[name] = h.hexdigest()[:16]
    return out


def read(run_dir: Path) -> dict[str, Any]:
    def load(rel: str) -> Any:
        path = run_dir / rel
        return torch.load(path, weights_only=True) if path.exists() else None

    def js(rel: str) -> Any:
        path = run_dir / rel
        return json.loads(path.read_text()) if path.exists() else None

    results = js("evaluate/results.json") or {}
    sanity = js("sanity/sanity.json") or {}
    metrics = js("search/metrics.json") or {}
    retrain = js("retrain/metrics.json") or []
    out: dict[str, Any] = {
        "mask": tensor_digest(load("search/mask.pt") or {}),
        "scores": tensor_digest(load("search/scores.pt") or {}),
        "final": tensor_digest((load("retrain/final.pt") or {}).get("state_dict", {})),
        "test_acc": results.get("test_acc"),
        "test_loss": results.get("test_loss"),
        "before": (metrics.get("pruning_point") or {}),
        "retrain_losses": [r.get("train_loss") for r in retrain],
        "sanity": {k: v.get("accuracy") for k, v in (sanity.get("variants") or {}).items()},
    }
    return out


def run(name: str, overrides: list[str], root: Path) -> dict[str, Any]:
    run_dir = root / name
    cmd = [sys.executable, "-m", "ltsearch", "run", *overrides, f"hydra.run.dir={run_dir}", "runtime.cache=false",
           "runtime.progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return read(run_dir)


def compare(a: Path, b: Path) -> int:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for name in sorted(set(left) | set(right)):
        same = left.get(name) == right.get(name)
        bad += not same
        print(f"{name:24s} {'identical' if same else 'DIFFERENT'}")
        if not same and name in left and name in right:
            for key in sorted(set(left[name]) | set(right[name])):
                if left[name].get(key) != right[name].get(key):
                    print(f"    {key}: {str(left[name].get(key))[:120]} -> {str(right[name].get(key))[:120]}")
    print(f"{len(set(left) | set(right)) - bad} identical, {bad} different")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/fingerprint"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="the tiny runs only (about a minute)")
    parser.add_argument("--only", nargs="*", help="run only these names")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    runs = dict(RUNS) if args.quick else {**RUNS, **REAL}
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only}
    found = {}
    for name, overrides in runs.items():
        found[name] = run(name, overrides, args.out)
        print(f"{name:24s} test acc {found[name]['test_acc']}", flush=True)
    text = json.dumps(found, indent=1, sort_keys=True)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
