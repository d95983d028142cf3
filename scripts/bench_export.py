#!/usr/bin/env python
"""Exported tickets: file sizes, and inference latency and memory of dense, masked dense, sparse and
onnxruntime execution, measured on this machine (CPU, and CUDA when a GPU is there).

  size     the compact ticket file (ltsearch.ticketfile) against the dense state_dict (torch.save), the ONNX
           model (dense, zeros in place) and the sparse TorchScript program, for LeNet-300-100 at 0.99 and
           ResNet-20 at 0.993. The file's size depends only on the architecture and the number of kept weights,
           not on which are kept, so a mask of the right density on the real architecture gives it.
  latency  one forward pass at batch 1 and 64, LeNet-300-100 at 0.9 / 0.99 / 0.998 and ResNet-20 at 0.99 /
           0.993 (CIFAR-10 input), of
             dense        the ticket with zeros in place, dense kernels (what retrain/final.pt gives you)
             masked       masks as parametrizations, w * mask in every forward (how ltsearch trains)
             sparse       ltsearch.sparsify: each linear/conv layer on the faster of dense, CSR and BSR,
                          timed on this machine at this batch size
             onnxruntime  the ONNX export (zeros in place) in onnxruntime's CPU (or CUDA) provider
           medians over rounds that alternate the four, with ratios to dense. Peak memory: what building the
           runner and 5 calls add to the resident set at its high-water mark, in a fresh process per runner
           (the runner's own weights, workspaces and activations; on CUDA the allocator's peak over the calls,
           onnxruntime not measured there); weights: the bytes of its parameters and buffers (the sparse
           convolutions' gather indices, built on the first call, are in the peak memory).
  runs     given finished run folders (--runs), `ltsearch export` of each to a ticket file and to ONNX checked
           in onnxruntime on the whole test set; the file is loaded back and compared with retrain/final.pt.

The masks of `size` and `latency` are random with the per-layer densities of the Erdos-Renyi-kernel rule
(RigL; layer density proportional to (sum of its dimensions) / (product of its dimensions), scaled to the
global density, capped at 1): bigger layers sparser than small ones, as in the tickets CTS and LTR find.
Latency depends on how many weights each layer keeps, not on which.

    nice -n 10 python scripts/bench_export.py --threads 1 --parts size latency runs --runs RUN_DIR...
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import markdown_table, run_parts, save_rows  # noqa: E402

import ltsearch.onnx_export as onnx_export  # noqa: E402
import ltsearch.ticketfile as ticketfile  # noqa: E402
from ltsearch.compose import compose  # noqa: E402
from ltsearch.masking import attach_masks, masks_of, plain_state_dict, prunable_weights, without_masks  # noqa: E402
from ltsearch.models import build_model  # noqa: E402
from ltsearch.sparse import quiet, sparsify, traced  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NETWORKS = {"LeNet-300-100": (["model=lenet300100"], (1, 28, 28)),
            "ResNet-20": (["model=resnet20"], (3, 32, 32))}
LATENCY = [("LeNet-300-100", 0.9), ("LeNet-300-100", 0.99), ("LeNet-300-100", 0.998), ("ResNet-20", 0.99),
           ("ResNet-20", 0.993)]
SIZES = [("LeNet-300-100", 0.99), ("ResNet-20", 0.993)]
KINDS = ("dense", "masked", "sparse", "onnxruntime")


# -- tickets ---------------------------------------------------------------------------------------------------
def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-layer densities of the Erdos-Renyi-kernel rule whose kept weights add up to `density` overall."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    full: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in full)
        scale = budget / sum(raw[n] * sizes[n] for n in shapes if n not in full)
        over = {n for n in shapes if n not in full and scale * raw[n] > 1}
        if not over:
            return {n: 1.0 if n in full else scale * raw[n] for n in shapes}
        full |= over


def ticket(network: str, sparsity: float, seed: int = 0) -> nn.Module:
    """The real architecture with random masks of the ERK per-layer densities (exactly the global count)."""
    overrides, shape = NETWORKS[network]
    cfg = compose("dataset=fake", *overrides)
    model = build_model(cfg.model, shape, 10, seed)
    weights = prunable_weights(model, cfg.model.exclude)
    densities = erk_densities({n: tuple(w.shape) for n, w in weights.items()}, 1 - sparsity)
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, w in weights.items():
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[torch.randperm(w.numel(), generator=gen)[: round(densities[name] * w.numel())]] = True
        masks[name] = keep.view(w.shape)
    return attach_masks(model, masks).eval()


def nbytes_of(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return len(buffer.getvalue())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every tensor a module holds (a sparse tensor: its values and indices)."""
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.layout in (torch.sparse_csr, torch.sparse_bsr):
            parts = (t.values(), t.crow_indices(), t.col_indices())
        else:
            parts = (t,)
        total += sum(p.numel() * p.element_size() for p in parts)
    return total


# -- size --------------------------------------------------------------------------------------------------------
def part_size(out: Path) -> None:
    rows = []
    for network, sparsity in SIZES:
        model = ticket(network, sparsity)
        state, masks = plain_state_dict(model), masks_of(model)
        kept, total = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
        dense = nbytes_of(state)
        file_bytes = len(ticketfile.encode(state, masks, {"weights": "trained"}))
        shape = NETWORKS[network][1]
        onnx_bytes = len(onnx_export.to_onnx(model, shape))
        example = torch.zeros(1, *shape)
        program = io.BytesIO()
        with quiet():
            torch.jit.save(traced(sparsify(model, example, force="csr"), example), program)
        rows.append({"network": network, "sparsity": sparsity, "kept": f"{kept} of {total}",
                     "dense state_dict": f"{dense:,} B", "ticket file": f"{file_bytes:,} B",
                     "ticket / dense": f"{100 * file_bytes / dense:.1f}%",
                     "ONNX (zeros in place)": f"{onnx_bytes:,} B",
                     "sparse TorchScript (CSR)": f"{len(program.getvalue()):,} B"})
    print(markdown_table(rows), flush=True)
    save_rows(out / "size.csv", rows)


# -- latency -----------------------------------------------------------------------------------------------------
def rss(key: str = "VmRSS:") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def build_runner(name: str, model: nn.Module, x: torch.Tensor, threads: int, plan: dict[str, str] | None = None,
                 onnx: bytes | None = None) -> tuple[Callable[[], Any] | None, int, list[Any]]:
    """One way to run the ticket on `x` (None: onnxruntime lacks the device's provider), the bytes its
    weights take, and the sparse plan (for `sparse`; `plan` reuses the kernels chosen before, untimed;
    `onnx`: the model already exported)."""
    device = x.device
    if name == "dense":
        dense = without_masks(model).to(device).eval()
        return (lambda: dense(x)), weight_bytes(dense), []
    if name == "masked":
        masked = model.to(device).eval()
        return (lambda: masked(x)), weight_bytes(masked), []
    if name == "sparse":
        fast = sparsify(model, x, plan=plan)
        return (lambda: fast(x)), weight_bytes(fast), fast.sparse_plan
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return None, 0, []
    onnx = onnx or onnx_export.to_onnx(model, tuple(x.shape[1:]))
    session = onnx_export.session(onnx, threads, (provider,))
    feed = {onnx_export.INPUT: x.cpu().numpy()}  # from host memory: onnxruntime copies it to the device
    return (lambda: session.run([onnx_export.OUTPUT], feed)), len(onnx), []


def peak_child(network: str, sparsity: float, batch: int, name: str, plan: dict[str, str], threads: int,
               onnx_file: str = "") -> None:
    """In a fresh process: the resident set's high-water mark while the runner is built and run 5 times, above
    the resident set before (the masked ticket, its input and the ONNX bytes already built): the runner's own
    weights and what its forward passes allocate. Printed in bytes."""
    torch.set_num_threads(threads)
    model = ticket(network, sparsity)
    x = torch.randn(batch, *NETWORKS[network][1], generator=torch.Generator().manual_seed(0))
    onnx = Path(onnx_file).read_bytes() if onnx_file else None
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark (VmHWM) to the resident set
    base = rss()
    with torch.no_grad(), quiet():
        call, _, _ = build_runner(name, model, x, threads, plan, onnx)
        for _ in range(5):
            call()
    print(rss("VmHWM:") - base)


def peak_memory(network: str, sparsity: float, batch: int, name: str, plan: dict[str, str], threads: int,
                onnx_file: Path) -> float | None:
    """MiB, measured in a child process (so that no runner inherits another's freed memory)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_export; "
            f"bench_export.peak_child({network!r}, {sparsity!r}, {batch!r}, {name!r}, {plan!r}, {threads!r}, "
            f"{str(onnx_file) if name == 'onnxruntime' else ''!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    try:
        return int(proc.stdout.strip().splitlines()[-1]) / 2**20
    except (ValueError, IndexError):
        print(f"  peak memory of {name} not measured: {proc.stderr.strip()[-300:]}", flush=True)
        return None


def median_times(calls: dict[str, Callable[[], Any]], device: torch.device, rounds: int, budget: float
                 ) -> dict[str, float]:
    """Median seconds per call of each runner, over rounds that alternate them (round 0 a warm-up)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    counts = {}
    for name, call in calls.items():
        call()
        sync()
        start = time.perf_counter()
        call()
        sync()
        counts[name] = max(1, int(budget / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                call()
            sync()
            if r:
                samples[name].append((time.perf_counter() - start) / counts[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def part_latency(out: Path, devices: list[torch.device], rounds: int, budget: float, threads: int) -> None:
    rows = []
    for device in devices:
        for network, sparsity in LATENCY:
            for batch in (1, 64):
                model = ticket(network, sparsity)
                x = torch.randn(batch, *NETWORKS[network][1], generator=torch.Generator().manual_seed(0)).to(device)
                with torch.no_grad(), quiet():
                    built = {name: build_runner(name, model, x, threads) for name in KINDS}
                    calls = {name: b[0] for name, b in built.items() if b[0] is not None}
                    times = median_times(calls, device, rounds, budget)
                    plan = built["sparse"][2]
                    sizes = {name: b[1] for name, b in built.items()}
                    peaks = {name: cuda_peak(call) if device.type == "cuda" and name != "onnxruntime" else None
                             for name, call in calls.items()}
                del built, calls
                if device.type == "cpu":
                    kernels = {c.name: c.kernel for c in plan}
                    onnx_file = out / "ticket.onnx"
                    onnx_file.write_bytes(onnx_export.to_onnx(model, tuple(x.shape[1:])))
                    peaks = {name: peak_memory(network, sparsity, batch, name, kernels, threads, onnx_file)
                             for name in times}
                sparse_layers = sum(c.kernel != "dense" for c in plan)
                for name in KINDS:
                    if name not in times:
                        continue
                    rows.append({"device": device.type, "network": network, "sparsity": sparsity, "batch": batch,
                                 "runner": name, "latency (us)": f"{times[name] * 1e6:.0f}",
                                 "vs dense": f"{times['dense'] / times[name]:.2f}x",
                                 "peak memory (MiB)": "n/a" if peaks[name] is None else f"{peaks[name]:.1f}",
                                 "weights (KiB)": f"{sizes[name] / 1024:.0f}",
                                 "note": f"{sparse_layers} of {len(plan)} layers sparse" if name == "sparse" else ""})
                print(markdown_table(rows[-len(times):]), flush=True)
                plan_line = "; ".join(f"{c.name}={c.kernel}" for c in plan)
                print(f"  plan ({device.type}, batch {batch}): {plan_line}", flush=True)
    print(markdown_table(rows), flush=True)
    save_rows(out / "latency.csv", rows)


def cuda_peak(call: Callable[[], Any]) -> float:
    """MiB the CUDA allocator held at its peak over 5 calls, above what it held before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for _ in range(5):
        call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# -- runs --------------------------------------------------------------------------------------------------------
def part_runs(out: Path, runs: list[Path]) -> None:
    import ltsearch

    for run in runs:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "ticket.safetensors"
            for args in (["--out", str(target)], ["--format", "onnx", "--check-samples", "-1",
                                                  "--out", str(Path(tmp) / "ticket.onnx")]):
                proc = subprocess.run([sys.executable, "-m", "ltsearch", "export", str(run), *args], text=True,
                                      capture_output=True, cwd=REPO)
                print(proc.stdout.strip() or proc.stderr.strip(), flush=True)
            final = torch.load(run / "retrain" / "final.pt", weights_only=True)
            net = ltsearch.load_ticket(target)
            state = plain_state_dict(net)
            same = all(torch.equal(state[k], v) and (k in final["masks"] or
                                                       torch.equal(state[k].view(-1).view(torch.uint8),
                                                                   v.contiguous().view(-1).view(torch.uint8)))
                       for k, v in final["state_dict"].items())
            same_masks = all(torch.equal(masks_of(net)[k], m) for k, m in final["masks"].items())
            dense = nbytes_of(final["state_dict"])
            print(f"  {run}: loaded back equal to retrain/final.pt: tensors {same}, masks {same_masks}; "
                  f"dense state_dict {dense:,} B, ticket file {target.stat().st_size:,} B "
                  f"({100 * target.stat().st_size / dense:.1f}%)", flush=True)
    (out / "runs.json").write_text(json.dumps([str(r) for r in runs]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["size", "latency"], choices=["size", "latency", "runs"])
    parser.add_argument("--runs", nargs="*", type=Path, default=[])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of PyTorch and onnxruntime")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.1, help="seconds per runner per round")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_export")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True,
                text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"CPU: {cpu}; threads: {args.threads}; GPU: {gpu}; torch {torch.__version__}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {"size": lambda: part_size(args.out),
             "latency": lambda: part_latency(args.out, devices, args.rounds, args.budget, args.threads),
             "runs": lambda: part_runs(args.out, args.runs)}
    return run_parts({name: parts[name] for name in args.parts})


if __name__ == "__main__":
    sys.exit(main())
