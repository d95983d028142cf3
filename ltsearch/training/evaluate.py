"""Forward passes without training: loss and accuracy over a split, and logits in batches.

Both go through the same (masked) forward path as training. `batch_stats=True` runs BatchNorm on each
batch's own statistics with the saved running statistics left untouched: how a mask is judged at the
pruning point. A network without running statistics (`model.bn_stats=batch`, the CTS authors' networks)
always normalises with each batch's statistics, so what it computes for a sample depends on the batch it
is evaluated in: `batch_size` (the config's `train.eval_batch_size`) is part of the result.

In a distributed run `evaluate` gives every rank every world-th batch and sums the counts over the ranks
(the batches are those of one process, so batch statistics too are the same); `predict` runs every batch
on every rank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ltsearch.distributed as distributed
from ltsearch.data import Data
from ltsearch.masking import batch_statistics
from ltsearch.runtime import Runtime


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, runtime: Runtime, split: str = "test", batch_size: int = 1000,
             limit: int = 0, batch_stats: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy in eval mode, in batches of `batch_size` (BatchNorm on running
    statistics unless `batch_stats` or the network has none)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    correct = torch.zeros((), dtype=torch.int64, device=runtime.device)
    total = torch.zeros((), dtype=torch.int64, device=runtime.device)
    with batch_statistics(model) if batch_stats else contextlib.nullcontext():
        for x, y in data.eval_batches(split, batch_size, runtime.device, limit, sharded=True):
            if runtime.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            total += y.numel()
    distributed.sum_(loss_sum, correct, total)
    model.train(was_training)
    return {"loss": float(loss_sum) / int(total), "acc": float(correct) / int(total)}


@torch.no_grad()
def predict(model: nn.Module, inputs: Iterable[Tensor],
            autocast: Callable[[], Any] = contextlib.nullcontext) -> Tensor:
    """The model's float logits for each input batch, concatenated (the model's mode is left as it is)."""
    outputs = []
    for x in inputs:
        with autocast():
            outputs.append(model(x).float())
    return torch.cat(outputs)
