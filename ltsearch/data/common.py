"""What the in-memory datasets (`ltsearch.data.Data`) and the image folders streamed from disk
(`ltsearch.data.stream`) share: turning stored uint8 or float samples into network inputs, the seeded
choice of a training subset, and the fixed order of an image folder's evaluation split."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ltsearch.seeding import generator

log = logging.getLogger(__name__)


def to_inputs(x: Tensor, mean: Tensor | None, std: Tensor | None, device: torch.device | None = None) -> Tensor:
    """Stored samples -> normalised float inputs on `device` (uint8 images are scaled to [0, 1])."""
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x = (x - mean.to(x.device).view(shape)) / std.to(x.device).view(shape)
    return x


def mixed_order(n: int) -> Tensor:
    """A fixed random order of n held-out samples (seeded by a constant: the same in every run and on every
    machine). Image folders list their images class by class; in that order a prefix (`dataset.test_subset`)
    holds one class, and so does every evaluation batch, which a network normalising with batch statistics
    (`model.bn_stats=batch`, or a mask judged with `batch_stats`) cannot be evaluated on. The CTS authors'
    evaluation loader shuffles (a DistributedSampler)."""
    return torch.randperm(n, generator=generator(0, "eval_order"))


def sample_indices(labels: Tensor, num_classes: int, count: int, seed: int, *keys: object,
                   per_class: bool = False) -> Tensor:
    """Indices (CPU) of a seeded training subset: `count` random samples, or `count` per class (in random
    order, classes interleaved, so that any slice of it is a mixed batch)."""
    gen = generator(seed, "sample", *keys)
    order = torch.randperm(labels.shape[0], generator=gen)
    if not per_class:
        return order[:count]
    labels = labels.cpu()[order]
    rank = torch.zeros_like(labels)  # how many samples of the same class come earlier in `order`
    for c in range(num_classes):
        of_c = labels == c
        rank[of_c] = torch.arange(int(of_c.sum()))
    short = [c for c in range(num_classes) if int((labels == c).sum()) < count]
    if short:
        log.warning("asked for %d training samples per class; classes %s have fewer (all of them used)",
                    count, short)
    return order[rank < count]
