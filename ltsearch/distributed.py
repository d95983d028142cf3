"""One run over several processes (torch.distributed): process-group setup from the launcher's environment,
this process's rank, and the few collectives the rest of ltsearch uses.

Launchers: torchrun (it exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) and Slurm through
submitit with several tasks per job (submitit's `TorchDistributedEnvironment` exports the same variables;
its local executor with several tasks works alike).
Backends: gloo for CPU tensors and, where CUDA is available, NCCL for CUDA tensors (one process group,
"cpu:gloo,cuda:nccl"). Without a launcher the world has one process and every function here returns at
once, so single-process runs compute exactly what they computed before.

Roles: every rank computes; rank 0 alone touches the run folder (writes, deletes, locks). `on_main(fn)` runs
`fn` on rank 0 and hands its result, or its error, to every rank, so a failure on rank 0 stops all ranks
with the same error instead of leaving them waiting in a collective.

Data: a global batch of n samples is split like `torch.utils.data.DistributedSampler` splits an epoch (rank
r takes positions r, r + W, r + 2W, ...), without its padding: `Shard` gives the positions and the loss
weight n_r W / n that makes the average of the ranks' gradients the gradient of the global batch's mean.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ltsearch.errors import LtsearchError

T = TypeVar("T")

LAUNCH_TIME_ENV = "LTSEARCH_LAUNCH_TIME"  # rank 0's start time, shared so every rank names the same run folder
DEFAULT_TIMEOUT_MIN = 30


class PeerFailure(LtsearchError):
    """Raised on the other ranks when rank 0 failed in work it did alone; rank 0 reports the error itself."""


# -- the environment ----------------------------------------------------------------------------------------
def _submitit_tasks() -> int:
    """Tasks of the job when it runs under submitit (a Slurm job, or submitit's local executor), else 0."""
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return 0
    from submitit import JobEnvironment

    return JobEnvironment().num_tasks


def launched() -> bool:
    """Whether this process is one of several of one run (torchrun, or a multi-task submitit job)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or _submitit_tasks() > 1


def setup(timeout_min: float = DEFAULT_TIMEOUT_MIN) -> bool:
    """Join the run's process group when launched as one of several processes (idempotent); returns whether
    this process is distributed. The CUDA device of a process is its local rank's."""
    if dist.is_initialized():
        return True
    if not launched():
        return False
    if "RANK" not in os.environ and _submitit_tasks() > 1:
        from submitit.helpers import TorchDistributedEnvironment

        # keep CUDA_VISIBLE_DEVICES (the task picks its GPU by local rank below); MASTER_PORT, when set, is kept
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return True


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


# -- collectives ----------------------------------------------------------------------------------------------
def barrier() -> None:
    """Every rank waits here until all have arrived (over gloo, whatever device the run trains on)."""
    if world_size() > 1:
        dist.all_reduce(torch.zeros(1))


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (any picklable value)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` run on rank 0 only; its result (or its error) on every rank. Rank 0 re-raises its own error, the
    others raise PeerFailure with its message."""
    if world_size() == 1:
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    error: BaseException | None = None
    if is_main():
        try:
            outcome = (True, fn())
        except Exception as exc:
            error = exc
            outcome = (False, str(exc).strip() or type(exc).__name__)
    ok, value = broadcast_object(outcome)
    if error is not None:
        raise error
    if not ok:
        raise PeerFailure(f"rank 0 failed: {value}")
    return value


def sum_(*tensors: Tensor) -> None:
    """All-reduce (sum) each tensor in place, on its own device."""
    if world_size() > 1:
        for t in tensors:
            dist.all_reduce(t)


def mean(t: Tensor) -> Tensor:
    """The average of `t` over the ranks (a new tensor; `t` itself on one process)."""
    if world_size() == 1:
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out.div_(world_size())


def mean_scalar(value: float, device: torch.device | str = "cpu") -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world_size()


def sum_floats(*values: float) -> tuple[float, ...]:
    """Each value summed over the ranks (float64)."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(float(v) for v in t)


def max_int(value: int, device: torch.device | str = "cpu") -> int:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so that what every rank evaluates is
    what rank 0 saves."""
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def shared_launch_time() -> float:
    """Rank 0's wall-clock time, on every rank (names the run folder the same everywhere)."""
    return float(broadcast_object(time.time()))


# -- data ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """This rank's part of every global batch: positions rank, rank + world, ... (strided, as
    DistributedSampler splits an epoch). A rank whose part of a short last batch is empty gets the batch's
    first sample with weight 0, so that it still takes part in the step's collectives."""

    rank: int = 0
    world: int = 1

    def size(self, n: int) -> int:
        """How many of a global batch's n samples are this rank's."""
        return len(range(self.rank, n, self.world))

    def take(self, batch: Tensor) -> Tensor:
        """This rank's rows of a global batch (its indices, or its samples)."""
        if self.world == 1:
            return batch
        return batch[self.rank::self.world] if self.size(len(batch)) else batch[:1]

    def weight(self, n: int) -> float:
        """Factor on this rank's mean loss so that averaging over ranks gives the global batch's mean."""
        return self.size(n) * self.world / n


def current_shard() -> Shard:
    return Shard(rank(), world_size())

