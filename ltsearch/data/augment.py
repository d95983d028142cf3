"""Batch augmentation on the training device: random crop with padding and horizontal flip.

Random draws (offsets, flip bits) come from the epoch's CPU generator, so the augmentation of every
sample is a function of (seed, epoch) alone, identical after a resume and across devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Flip each image of a (B, C, H, W) batch along W with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    flip = flip.to(x.device)
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def random_crop(x: Tensor, gen: torch.Generator, padding: int = 4, mode: str = "reflect") -> Tensor:
    """Pad a (B, C, H, W) batch by `padding` (reflect, as in the CTS protocol) and take a random crop of
    the original size from each image, gathered with advanced indexing (no per-sample loop)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding), mode=mode)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def augment_batch(x: Tensor, kind: str, gen: torch.Generator) -> Tensor:
    if kind == "none":
        return x
    if x.dim() != 4:
        raise ValueError(f"augmentation '{kind}' needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
    if kind == "crop_flip":
        x = random_crop(x, gen)
    return random_flip(x, gen)
