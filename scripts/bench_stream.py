#!/usr/bin/env python
"""Throughput of the image-folder dataset (`dataset=imagenet`): training images per second read by 0 and by
2 DataLoader workers, streamed from disk and decoded once into memory, on a generated folder of JPEGs of
mixed sizes (ImageNet-like: 160-500 pixels a side). Only the data path is timed (no network): decoding,
random-resized crop 224 + flip and batching, up to the uint8 batches the workers deliver (what a GPU run
copies to the device, where it normalises them); and, as a CPU run sees them, normalised to float in the
training process ("to float" column).

    python scripts/bench_stream.py                       # 2000 images, batch 64, 2 epochs per setting
    python scripts/bench_stream.py --images 500 --epochs 1 --folder /tmp/jpegs   # quicker

`make_image_folder` also builds the folders of the streaming tests (tests/test_stream.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import markdown_table  # noqa: E402

from ltsearch.config import Augment, DatasetConfig, RuntimeConfig  # noqa: E402
from ltsearch.data.stream import load_image_folder  # noqa: E402
from ltsearch.seeding import generator  # noqa: E402


def make_image_folder(root: Path, images: int, classes: int = 10, sizes: tuple[int, int] = (160, 500),
                      val_fraction: float = 0.1, tiny_layout: bool = False, seed: int = 0) -> Path:
    """A seeded folder of JPEGs of mixed sizes: each class a smooth colour pattern plus noise (learnable).
    ImageNet layout (train/<class>/, val/<class>/), or Tiny-ImageNet's (train/<class>/images/, val/images/
    with val_annotations.txt)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(classes, 4, 4, 3))
    names = [f"n{c:08d}" for c in range(classes)]
    lines = []
    for i in range(images):
        c = i % classes
        val = (i // classes) % round(1 / val_fraction) == 0  # whole rows of classes
        w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        grid = np.clip(templates[c] + rng.normal(0, 40, size=(4, 4, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(grid).resize((w, h), Image.BILINEAR)
        if val and tiny_layout:
            name = f"val_{i}_{names[c]}.JPEG"  # the class in the name too, for tests
            folder, lines = root / "val" / "images", [*lines, f"{name}\t{names[c]}\t0\t0\t1\t1"]
        else:
            folder = root / ("val" if val else "train") / names[c] / ("images" if tiny_layout and not val else "")
            name = f"{names[c]}_{i}.JPEG"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / name, quality=90)
    if tiny_layout:
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


SETTINGS = [(storage, workers) for storage in ("stream", "memory") for workers in (0, 2)]


def epoch_rates(data: object, batch: int, epoch: int) -> tuple[float, float]:
    """Images per second of one epoch as uint8 batches, and of the same epoch normalised to float here."""
    t0 = time.perf_counter()
    seen = sum(int(y.numel()) for _, y in data.load("train", data.train_keys(batch, generator(0, "b", epoch))))
    raw = seen / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    seen = sum(int(y.numel()) for _, y in data.train_batches(batch, generator(0, "b", epoch)))
    return raw, seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="epochs per setting, the settings interleaved")
    parser.add_argument("--folder", type=Path, default=None, help="reuse or create the JPEG folder here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.folder or Path(tmp) / "jpegs"
        if not (root / "train").is_dir():
            make_image_folder(root, args.images)
        data, built = {}, {}
        for storage, workers in SETTINGS:
            t0 = time.perf_counter()
            cfg = DatasetConfig(name="imagenet_folder", root=str(root), augment=Augment.resized_crop_flip)
            data[storage, workers] = load_image_folder(cfg, RuntimeConfig(data_storage=storage, data_workers=workers))
            built[storage, workers] = time.perf_counter() - t0
        # interleaved, so that a load from elsewhere on a shared machine falls on every setting alike
        rates: dict[tuple[str, int], list[tuple[float, float]]] = {s: [] for s in SETTINGS}
        for epoch in range(args.rounds):
            for setting in SETTINGS:
                rates[setting].append(epoch_rates(data[setting], args.batch, epoch))
        rows = [{"storage": storage, "workers": workers,
                 "images/s (best, median)": f"{max(r for r, _ in rates[storage, workers]):.0f}, "
                                            f"{statistics.median(r for r, _ in rates[storage, workers]):.0f}",
                 "to float (best, median)": f"{max(f for _, f in rates[storage, workers]):.0f}, "
                                            f"{statistics.median(f for _, f in rates[storage, workers]):.0f}",
                 "setup s": f"{built[storage, workers]:.1f}"} for storage, workers in SETTINGS]
    print(f"\n{args.images} JPEGs (160-500 px), batch {args.batch}, random-resized crop 224 + flip, "
          f"{args.rounds} epochs per setting\n")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
