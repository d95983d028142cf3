"""Compute cost in hardware-independent units, so that runs on different machines can be compared.

Every stage counts the samples it passes through the network forward and backward ("train") or
forward only ("forward") (`StageDir.count`). The FLOPs of one sample are measured once per run with
PyTorch's own `FlopCounterMode` on the dense model (one forward, and one forward + backward), so

    FLOPs        = train_samples * F_train + forward_samples * F_forward
    epoch equiv. = FLOPs / (N_train * F_train)    (training epochs of the dense model)

Dense FLOPs are counted: masked weights are multiplied as zeros by the dense kernels, which is the
compute actually spent. Work copied from the cache is listed separately (its original cost), so a run
reports both what it spent and what its result cost in total.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ltsearch.rundir import MARKER
from ltsearch.storage import load_json


def flops_per_sample(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> dict[str, float]:
    """Forward and forward+backward FLOPs of one sample (measured on a batch of 2, train mode)."""
    model.train()
    x = torch.zeros(2, *input_shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    train = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    return {"forward": forward / 2, "train": train / 2}


def _units(compute: dict[str, int], flops: dict[str, float], epoch_flops: float) -> dict[str, Any]:
    total = compute.get("train", 0) * flops["train"] + compute.get("forward", 0) * flops["forward"]
    return {"train_samples": compute.get("train", 0), "forward_samples": compute.get("forward", 0),
            "flops": total, "epochs": total / epoch_flops if epoch_flops else 0.0}


def reused_work(run_dir: Path) -> list[dict[str, Any]]:
    """Every stage folder below `run_dir` that was copied from the cache, with its original cost."""
    found = []
    for marker in sorted(Path(run_dir).rglob(MARKER)):
        info = load_json(marker)
        if "reused" in info:
            found.append({"stage": str(marker.parent.relative_to(run_dir)), **info["reused"]})
    return found


def cost_summary(run_dir: Path, stages: dict[str, dict[str, Any]], flops: dict[str, float], train_size: int,
                 counted: tuple[str, ...]) -> dict[str, Any]:
    """Per-stage cost, the run's total over `counted` stages, and the total including reused work."""
    epoch_flops = train_size * flops["train"]
    per_stage = {name: {"wall_time": info["wall_time"], **_units(info.get("compute", {}), flops, epoch_flops)}
                 for name, info in stages.items()}
    spent = {"wall_time": sum(per_stage[s]["wall_time"] for s in counted if s in per_stage),
             "flops": sum(per_stage[s]["flops"] for s in counted if s in per_stage)}
    spent["epochs"] = spent["flops"] / epoch_flops if epoch_flops else 0.0
    reused = reused_work(run_dir)
    reused_units = [_units(r.get("compute") or {}, flops, epoch_flops) for r in reused]
    for entry, units in zip(reused, reused_units, strict=True):
        entry.update(flops=units["flops"], epochs=units["epochs"])
    with_reused = {
        "wall_time": spent["wall_time"] + sum(r.get("wall_time") or 0.0 for r in reused),
        "flops": spent["flops"] + sum(u["flops"] for u in reused_units),
    }
    with_reused["epochs"] = with_reused["flops"] / epoch_flops if epoch_flops else 0.0
    return {"flops_per_sample": flops, "train_size": train_size, "dense_epoch_flops": epoch_flops,
            "stages": per_stage, "total": spent, "reused": reused, "total_with_reused": with_reused}
