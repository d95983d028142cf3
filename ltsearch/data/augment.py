"""Batch augmentation on the training device: random crop with padding (reflect for `crop_flip`, as in
the CTS protocol; zeros for `crop_flip_zero`, as torchvision's RandomCrop in open_lth) and horizontal flip.

Random draws (offsets, flip bits) come from the epoch's CPU generator, so the augmentation of every
sample is a function of (seed, epoch) alone, identical after a resume and across devices. In a distributed
run every rank draws for the whole global batch of `n` samples and applies its own rows of the draws
(`Shard.take`), so a sample is augmented alike whatever the number of processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ltsearch.distributed import Shard

WHOLE = Shard()


def random_flip(x: Tensor, gen: torch.Generator, shard: Shard = WHOLE, n: int = 0) -> Tensor:
    """Flip each image of a (B, C, H, W) batch along W with probability 1/2 (x: `shard`'s rows of a global
    batch of n, default B)."""
    flip = shard.take(torch.rand(n or x.shape[0], generator=gen) < 0.5)
    flip = flip.to(x.device)
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def random_crop(x: Tensor, gen: torch.Generator, padding: int = 4, mode: str = "reflect", shard: Shard = WHOLE,
                n: int = 0, fill: Tensor | None = None) -> Tensor:
    """Pad a (B, C, H, W) batch by `padding` and take a random crop of the original size from each image,
    gathered with advanced indexing (no per-sample loop). `mode`: reflect (the CTS protocol), or constant
    with the per-channel value `fill` (C,) (default 0): the normalised value of a black pixel gives what
    torchvision's RandomCrop(padding=4) does before normalisation."""
    b, _, h, w = x.shape
    if mode == "constant" and fill is not None:
        shift = fill.to(x.device, x.dtype).view(1, -1, 1, 1)
        padded = F.pad(x - shift, (padding, padding, padding, padding)) + shift
    else:
        padded = F.pad(x, (padding, padding, padding, padding), mode=mode)
    oy = shard.take(torch.randint(0, 2 * padding + 1, (n or b,), generator=gen)).to(x.device)
    ox = shard.take(torch.randint(0, 2 * padding + 1, (n or b,), generator=gen)).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def augment_batch(x: Tensor, kind: str, gen: torch.Generator, shard: Shard = WHOLE, n: int = 0,
                  fill: Tensor | None = None) -> Tensor:
    """Augment `shard`'s rows x of a global batch of n samples (default: x is the whole batch); `fill`: the
    padding value per channel of `crop_flip_zero` (the normalised value of a black pixel)."""
    if kind == "none":
        return x
    if x.dim() != 4:
        raise ValueError(f"augmentation '{kind}' needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
    if kind == "crop_flip":
        x = random_crop(x, gen, shard=shard, n=n)
    elif kind == "crop_flip_zero":
        x = random_crop(x, gen, mode="constant", shard=shard, n=n, fill=fill)
    return random_flip(x, gen, shard, n)
