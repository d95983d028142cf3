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
                 ticket_stages: tuple[str, ...]) -> dict[str, Any]:
    """Per-stage cost and its sums: `total` over every stage (what the run spent), `ticket` over
    `ticket_stages` (finding and training the ticket, without the sanity checks), each also with the work
    reused from the cache added (`*_with_reused`)."""
    epoch_flops = train_size * flops["train"]
    per_stage = {name: {"wall_time": info["wall_time"], **_units(info.get("compute", {}), flops, epoch_flops)}
                 for name, info in stages.items()}

    def over(names: list[str], extra: tuple[dict[str, Any], ...] = ()) -> dict[str, float]:
        parts = [per_stage[s] for s in names] + list(extra)
        summed = {"wall_time": sum(p.get("wall_time") or 0.0 for p in parts),
                  "flops": sum(p.get("flops") or 0.0 for p in parts)}
        return {**summed, "epochs": summed["flops"] / epoch_flops if epoch_flops else 0.0}

    reused = reused_work(run_dir)
    for entry in reused:
        units = _units(entry.get("compute") or {}, flops, epoch_flops)
        entry.update(flops=units["flops"], epochs=units["epochs"])
    ticket = [s for s in per_stage if s in ticket_stages]
    return {"flops_per_sample": flops, "train_size": train_size, "dense_epoch_flops": epoch_flops,
            "stages": per_stage, "total": over(list(per_stage)), "ticket": over(ticket), "reused": reused,
            "total_with_reused": over(list(per_stage), tuple(reused)),
            "ticket_with_reused": over(ticket, tuple(reused))}


def ticket_cost(cost: dict[str, Any]) -> dict[str, Any]:
    """The ticket's cost, reused work included, from a results.json `cost` (wall time, FLOPs, dense epochs).
    Results written before the ticket's cost was told apart from the sanity checks' have only the total,
    which then left the sanity stage out."""
    return cost.get("ticket_with_reused") or cost.get("total_with_reused") or {}
