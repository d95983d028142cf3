"""Seeds derived from the run seed and a purpose.

Every random choice in ltsearch draws from a `torch.Generator` seeded by `derive_seed(seed, *keys)`. The
keys name the purpose ("retrain", "epoch", 7), so a resumed stage rebuilds exactly the generator an
uninterrupted run would have used at that point, with no RNG state to carry around, and two purposes
never share a stream. Python's `hash()` is salted per process, so a stable hash is used instead.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that depends only on `seed` and the purpose `keys`."""
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded for one purpose."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, *keys))
    return gen


def seed_everything(seed: int) -> None:
    """Seed the global generators too, for library code that draws from them (e.g. default inits)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
