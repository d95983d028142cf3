"""Loss and accuracy of a model over a split, through the same (masked) forward path as training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltsearch.data import Data
from ltsearch.runtime import Runtime


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, runtime: Runtime, split: str = "test", batch_size: int = 1000,
             limit: int = 0) -> dict[str, float]:
    """Mean cross-entropy and accuracy (eval mode: BatchNorm uses running statistics)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    correct = torch.zeros((), dtype=torch.int64, device=runtime.device)
    total = 0
    for x, y in data.eval_batches(split, batch_size, runtime.device, limit):
        if runtime.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        total += y.numel()
    model.train(was_training)
    return {"loss": float(loss_sum) / total, "acc": float(correct) / total}
