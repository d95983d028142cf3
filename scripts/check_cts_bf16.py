#!/usr/bin/env python
"""Does bf16 autocast in the CTS search change the selected mask beyond seed noise? (needs CUDA)

Runs the same CTS-KL search (same seed, same pruning point) with the forward passes in fp32 and in bf16,
and compares the overlap of the two masks (Jaccard index of the kept weights) with the overlap of two fp32
searches that differ only in the noise seed. If bf16 vs fp32 overlaps at least as much as seed vs seed,
bf16 changes the mask only within noise and `pruner.autocast=true` is safe for that setting.

    python scripts/check_cts_bf16.py experiment=resnet20_cifar10 dataset=cifar10_jpeg \\
        dataset.root=DATA_DIR/cifar10-jpeg.tar.gz sparsity=0.993 pruner.epochs=5
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from ltsearch.compose import compose
from ltsearch.context import RunContext
from ltsearch.masking import plain_state_dict
from ltsearch.pruners import PruneContext, build_pruner
from ltsearch.rundir import ArtifactDir
from ltsearch.runtime import Runtime
from ltsearch.stages.search import pruning_point


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union


def search(ctx: RunContext, state: dict, folder: str, seed: int, autocast: bool) -> dict[str, torch.Tensor]:
    cfg = ctx.cfg
    model = ctx.model_with(state)
    out = ArtifactDir(ctx.run_dir / folder).start()
    pcfg = dataclasses.replace(cfg.pruner, autocast=autocast)
    pctx = PruneContext(model=model, data=ctx.data, cfg=cfg, runtime=ctx.runtime, out=out, seed=seed,
                        density=cfg.density)
    t0 = time.perf_counter()
    masks = build_pruner(pcfg).prune(pctx).masks
    print(f"  {folder}: {time.perf_counter() - t0:.1f}s", flush=True)
    return masks


def main() -> int:
    if not torch.cuda.is_available():
        print("check_cts_bf16: needs a CUDA device (bf16 autocast is used on CUDA only)")
        return 2
    cfg = compose("pruner=cts_kl", "runtime.progress=false", *sys.argv[1:])
    run_dir = Path(tempfile.mkdtemp(prefix="check_cts_bf16_"))
    ctx = RunContext(cfg=cfg, run_dir=run_dir, runtime=Runtime.from_config(cfg.runtime))
    state = plain_state_dict(pruning_point(ctx, ArtifactDir(run_dir / "search").start()))
    fp32_a = search(ctx, state, "fp32_seed0", cfg.seed, autocast=False)
    fp32_b = search(ctx, state, "fp32_seed1", cfg.seed + 1, autocast=False)
    bf16_a = search(ctx, state, "bf16_seed0", cfg.seed, autocast=True)
    seed_noise, bf16 = jaccard(fp32_a, fp32_b), jaccard(fp32_a, bf16_a)
    print(f"{torch.cuda.get_device_name()}: Jaccard(fp32 seed 0, fp32 seed 1) = {seed_noise:.4f}; "
          f"Jaccard(fp32 seed 0, bf16 seed 0) = {bf16:.4f}; "
          f"{'bf16 within seed noise' if bf16 >= seed_noise else 'bf16 changes the mask beyond seed noise'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
