#!/usr/bin/env python
"""The first run a user makes, timed: `ltsearch run` with no overrides, from a fresh process and an empty
cache, as a new user runs it (benchmark, not a test: times belong to the machine, and the CPU is printed
beside every figure).

  machine  the CPU (model, AVX2 / AVX-512), the ISA torch uses, and its 1024x1024 float32 matmul rate on
           1 and on all threads: the arithmetic this machine can do.
  step     one training step of the default network at the default batch size (SGD with momentum, as the
           trainer runs it): milliseconds and the GFLOP/s it achieves, as a fraction of the matmul rate.
  run      `python -m ltsearch run` (plus --overrides) in a new folder with an empty cache, --repeats
           times: wall time of the whole command (imports and data included), the stages' times, the
           dense-epoch equivalents, the accuracy and the sanity margins.

`--isa avx2` runs every part with torch's kernels, oneDNN and MKL held to AVX2 (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS): how an AVX2-only CPU of the same clock runs it; `--isa sse4`
holds them to SSE4 (no AVX), the slowest kernels torch has on x86-64. `--old` times
the defaults before the quickstart was retuned (batch 32, 40 epochs, sparsity 0.9, short search, four
sanity variants) for the before/after comparison.

    python scripts/bench_quickstart.py                    # this machine as it is
    python scripts/bench_quickstart.py --isa avx2         # held to AVX2
    python scripts/bench_quickstart.py --isa sse4         # held to SSE4 (no AVX)
    python scripts/bench_quickstart.py --old --repeats 1  # the old defaults
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ISA_LIMITS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    # no AVX at all: torch's generic kernels, oneDNN and MKL at SSE4 (an x86-64 CPU of about 2010)
    "sse4": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
# The quickstart before it was retuned (explicit, so that this stays the same comparison later).
OLD_DEFAULTS = ["sparsity=0.9", "model.width=32", "train.batch_size=32", "train.lr=0.05", "train.epochs=40",
                "train.rewind_epoch=2", "pruner.length=short", "pruner.lr=0.1", "model.exclude=[]",
                "model.head=flatten",
                "sanity.variants=[shuffle,invert,reinit,random]"]


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and which of AVX2 / AVX-512F it has (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return name, [f for f in ("avx2", "avx512f") if f in flags]


def training_step(model, optimizer, x, y):
    """One SGD step on a fixed batch, as a callable."""
    import torch.nn.functional as F

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def machine_and_step(threads: int) -> dict:
    """Matmul rate and one default training step (run in a child, so that --isa reaches the kernels)."""
    import torch

    from ltsearch.compose import compose
    from ltsearch.cost import flops_per_sample
    from ltsearch.data import build_data
    from ltsearch.models import build_model
    from ltsearch.training.optim import build_optimizer

    def median_time(fn, inner: int, rounds: int = 7) -> float:
        for _ in range(2):
            fn()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - start) / inner)
        return statistics.median(times)

    out = {"torch_isa": torch.backends.cpu.get_cpu_capability(), "threads_all": threads}
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    cfg = compose()
    data = build_data(cfg.dataset)
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        out[f"matmul_gflops_{n}"] = 2 * 1024**3 / median_time(lambda: a @ b, 10) / 1e9
        model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
        flops = flops_per_sample(model, data.input_shape, torch.device("cpu"))["train"]
        optimizer = build_optimizer(model.parameters(), cfg.train)
        batch = cfg.train.batch_size
        seconds = median_time(training_step(model, optimizer, data.train_x[:batch], data.train_y[:batch]), 10)
        out[f"step_ms_{n}"] = 1e3 * seconds
        out[f"step_gflops_{n}"] = flops * batch / seconds / 1e9
    out["batch"] = cfg.train.batch_size
    return out


def timed_run(overrides: list[str], env: dict[str, str]) -> dict:
    """`python -m ltsearch run` in a fresh folder with an empty cache; its results and outside wall time."""
    with tempfile.TemporaryDirectory(prefix="ltsearch-quickstart-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "ltsearch", "run", *overrides, "runtime.progress=false", "-q",
               f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp,
                              env={**os.environ, **env, "LTSEARCH_CACHE": str(Path(tmp) / "cache")})
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    sanity = (results.get("sanity") or {}).get("variants", {})
    return {"wall": wall, "stages": results["wall_time"], "epochs": results["cost"]["total"]["epochs"],
            "ticket_epochs": results["cost"]["ticket"]["epochs"], "acc": results["test_acc"],
            "sparsity": results["sparsity"],
            "margins": {k: v["margin"] for k, v in sanity.items() if v.get("margin") is not None}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", choices=sorted(ISA_LIMITS), default="native")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--old", action="store_true", help="time the defaults before the retuning")
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--parts", nargs="+", choices=["machine", "run"], default=["machine", "run"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(machine_and_step(os.cpu_count() or 1)))
        return 0
    env = ISA_LIMITS[args.isa]
    name, flags = cpu_model()
    print(f"CPU: {name} ({os.cpu_count()} logical CPUs; has {', '.join(flags) or 'neither AVX2 nor AVX-512'});"
          f" kernels held to: {args.isa}")
    if "machine" in args.parts:
        proc = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True,
                              env={**os.environ, **env}, check=True)
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"torch ISA: {m['torch_isa']}")
        for n in sorted({1, m["threads_all"]}):
            print(f"  {n} thread(s): matmul {m[f'matmul_gflops_{n}']:.0f} GFLOP/s; training step of the "
                  f"default network at batch {m['batch']}: {m[f'step_ms_{n}']:.1f} ms, "
                  f"{m[f'step_gflops_{n}']:.1f} GFLOP/s = {m[f'step_gflops_{n}'] / m[f'matmul_gflops_{n}']:.0%}"
                  f" of the matmul rate")
    if "run" in args.parts:
        overrides = (OLD_DEFAULTS if args.old else []) + args.overrides
        label = "old defaults" if args.old else "defaults"
        print(f"ltsearch run ({label}{': ' + ' '.join(args.overrides) if args.overrides else ''}), "
              f"fresh process, empty cache:")
        for i in range(args.repeats):
            r = timed_run(overrides, env)
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stages"].items() if k not in ("ticket", "total"))
            margins = ", ".join(f"{k} {100 * v:+.1f}" for k, v in r["margins"].items())
            print(f"  run {i + 1}: {r['wall']:.1f} s wall ({stages}); {r['epochs']:.1f} dense epochs "
                  f"({r['ticket_epochs']:.1f} for the ticket); sparsity {r['sparsity']}: test acc "
                  f"{100 * r['acc']:.1f}%; sanity margins (points): {margins}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
