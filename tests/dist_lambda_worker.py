"""One rank of the GradBalance-under-DDP test (run by torchrun from tests/test_distributed.py).

Every rank feeds the sparsity control its own gradient g_r = (r + 1) * base + r * twist for two steps, once
with pruner.ddp_lambda=authors and once with global, and rank 0 writes lambda and theta.grad of every step
to the JSON file named by argv[1]; the test recomputes them by hand.
"""

from __future__ import annotations

import json
import sys

import torch

from ltsearch import distributed
from ltsearch.pruners.concrete import SparsityControl
from ltsearch.pruners.cts import CTSConfig

N = 64
DENSITY = 0.1


def gradients(rank: int, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + step)
    base, twist = torch.randn(N, generator=gen), torch.randn(N, generator=gen)
    return (rank + 1) * base + rank * twist


def main() -> None:
    distributed.setup()
    theta = torch.full((N,), 0.5)  # sigmoid(0.5) = 0.62 > 1.1 d: s_err > 0, so lambda* is not 0
    out = {}
    for mode in ("authors", "global"):
        control = SparsityControl(CTSConfig(name="cts", ddp_lambda=mode), DENSITY, 0.1)
        steps = []
        for step in range(2):
            grad, err = control.gradient(theta, gradients(distributed.rank(), step))
            steps.append({"lam": control.lam, "grad": grad.tolist(), "s_err": err})
        out[mode] = steps
    if distributed.is_main():
        with open(sys.argv[1], "w") as handle:
            json.dump({"world": distributed.world_size(), **out}, handle)
    distributed.teardown()


if __name__ == "__main__":
    main()
