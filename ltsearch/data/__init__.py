"""Datasets held as tensors, batched and augmented on the training device.

`build_data(cfg)` loads a whole dataset into memory once (images as uint8, MNIST-1D as float) and
returns a `Data` object. Training batches come from a seeded permutation per epoch; normalisation and
augmentation run on the batch, on the training device. When the data stays in host memory while training
runs on CUDA (`host_prefetch`), each batch is gathered into pinned memory on a worker thread one step
ahead and copied asynchronously.

In a run over several processes (`shard`, from `ltsearch.distributed`) the training batches are this
rank's rows of each global batch of the one seeded permutation every rank draws; `eval_batches(...,
sharded=True)` gives this rank every world-th batch of a split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import Tensor

from ltsearch.config import DatasetConfig, RuntimeConfig
from ltsearch.data.augment import augment_batch
from ltsearch.data.common import sample_indices, to_inputs
from ltsearch.data.prefetch import prefetched
from ltsearch.data.sources import (
    Arrays,
    load_cifar,
    load_fake,
    load_imagefolder,
    load_mnist1d,
    load_torchvision_mnist,
)
from ltsearch.data.stream import ImageFolderData, load_image_folder
from ltsearch.distributed import Shard
from ltsearch.errors import DataError
from ltsearch.seeding import generator
from ltsearch.storage import tensor_digest

log = logging.getLogger(__name__)
T = TypeVar("T")

DATASETS: dict[str, Callable[[DatasetConfig], Arrays]] = {
    "mnist1d": load_mnist1d,
    "mnist": load_torchvision_mnist,
    "fashion_mnist": load_torchvision_mnist,
    "cifar10": load_cifar,
    "cifar100": load_cifar,
    "imagefolder": load_imagefolder,
    "fake": load_fake,
}
# Datasets that are not one tensor in memory: image folders of any image size, read by DataLoader workers.
FOLDER_DATASETS: dict[str, Callable[[DatasetConfig, RuntimeConfig], ImageFolderData]] = {
    "imagenet_folder": load_image_folder,
}


@dataclass
class Data:
    """A train and a test split as tensors, plus how to turn stored samples into network inputs."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: Tensor | None
    std: Tensor | None
    augment: str
    host_prefetch: bool = False
    identity: str = ""  # what the content is, wherever it was read from (`Arrays.identity`)
    shard: Shard = Shard()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def train_size(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def test_size(self) -> int:
        return int(self.test_x.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory the stored samples take (both splits)."""
        return sum(t.element_size() * t.numel() for t in (self.train_x, self.test_x))

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> Data:
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return replace(self, train_x=move(self.train_x), train_y=move(self.train_y),
                       test_x=move(self.test_x), test_y=move(self.test_y),
                       mean=move(self.mean), std=move(self.std))

    def prepare(self, x: Tensor, device: torch.device | None = None) -> Tensor:
        """Stored samples -> normalised float inputs on `device` (uint8 images are scaled to [0, 1])."""
        return to_inputs(x, self.mean, self.std, device)

    def black(self) -> Tensor | None:
        """A black pixel as a normalised input (per channel), the padding of `crop_flip_zero`."""
        if self.mean is None or self.std is None:
            return None
        return -self.mean / self.std

    def train_batches(self, batch_size: int, gen: torch.Generator, augment: bool = True,
                      device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled training batches (the last one may be smaller); this rank's rows of each."""
        order = self.train_order(batch_size, gen)
        fill = self.black() if self.augment == "crop_flip_zero" else None
        for idx, (x, y) in zip(order, self.train_batches_at(order, device), strict=True):
            if augment:  # on the calling thread: the generator's draws stay in one order
                x = augment_batch(x, self.augment, gen, self.shard, len(idx), fill)
            yield x, y

    def train_order(self, batch_size: int, gen: torch.Generator) -> list[Tensor]:
        """The sample indices of one epoch's batches, from one seeded permutation (on the data's device)."""
        order = torch.randperm(self.train_x.shape[0], generator=gen).to(self.device)
        return list(order.split(batch_size))

    def train_batches_at(self, batches: list[Tensor], device: torch.device | None = None
                         ) -> Iterator[tuple[Tensor, Tensor]]:
        """The un-augmented training samples of each index tensor in `batches` (this rank's rows of it), as
        network inputs and labels on `device`."""
        take = self.shard.take
        return self._batches(lambda idx: (self.train_x[take(idx)], self.train_y[take(idx)]), batches, device)

    def _batches(self, gather: Callable[[T], tuple[Tensor, Tensor]], keys: list[T],
                 device: torch.device | None) -> Iterator[tuple[Tensor, Tensor]]:
        """Stored samples gathered per key, moved to `device` and prepared; gathered a step ahead on a worker
        thread (into pinned memory for CUDA) when the data stays in host memory (`host_prefetch`)."""
        pin = self.host_prefetch and device is not None and device.type == "cuda"

        def stage(key: T) -> tuple[Tensor, Tensor]:
            x, y = gather(key)
            return (x.pin_memory(), y.pin_memory()) if pin else (x, y)

        for x, y in prefetched(keys, stage) if self.host_prefetch else map(gather, keys):
            x = self.prepare(x, device)
            yield x, y.to(x.device, non_blocking=True)

    def eval_batches(self, split: str, batch_size: int, device: torch.device | None = None,
                     limit: int = 0, sharded: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """The `split` ("train" or "test") in order, without augmentation; `limit` > 0 takes a prefix;
        `sharded`: this rank's batches only (every world-th)."""
        xs, ys = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        n = min(limit, xs.shape[0]) if limit else xs.shape[0]
        ranges = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        if sharded:
            ranges = ranges[self.shard.rank::self.shard.world]
        return self._batches(lambda r: (xs[r[0]:r[1]], ys[r[0]:r[1]]), ranges, device)

    def sample(self, count: int, seed: int, *keys: object, per_class: bool = False,
               device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """A seeded, un-augmented training subset: `count` random samples, or `count` per class (in random
        order, classes interleaved, so that any slice of it is a mixed batch)."""
        idx = sample_indices(self.train_y, self.num_classes, count, seed, *keys, per_class=per_class)
        idx = idx.to(self.device)
        x = self.prepare(self.train_x[idx], device)
        return x, self.train_y[idx].to(x.device)


def build_data(cfg: DatasetConfig, runtime: RuntimeConfig | None = None) -> Data | ImageFolderData:
    """Load the dataset named by `cfg.name` (on the CPU) and apply subsets and normalisation settings; an
    image folder of `FOLDER_DATASETS` is indexed, and kept in memory or streamed (`runtime.data_storage`)."""
    if cfg.name in FOLDER_DATASETS:
        return FOLDER_DATASETS[cfg.name](cfg, runtime or RuntimeConfig())
    if cfg.augment.value == "resized_crop_flip":
        raise DataError(f"augment=resized_crop_flip (ImageNet's random-resized crop) needs an image folder of "
                        f"dataset.name={' or '.join(FOLDER_DATASETS)}; dataset '{cfg.name}' supports none, flip "
                        f"and crop_flip")
    arrays = DATASETS[cfg.name](cfg)
    train_x, train_y, test_x, test_y = arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y
    if cfg.train_subset:
        idx = torch.randperm(train_x.shape[0], generator=generator(0, "train_subset"))[: cfg.train_subset]
        train_x, train_y = train_x[idx.sort().values], train_y[idx.sort().values]
    if cfg.test_subset:
        test_x, test_y = test_x[: cfg.test_subset], test_y[: cfg.test_subset]
    mean = cfg.mean or arrays.mean
    std = cfg.std or arrays.std
    return Data(
        name=cfg.name,
        train_x=train_x.contiguous(),
        train_y=train_y.long().contiguous(),
        test_x=test_x.contiguous(),
        test_y=test_y.long().contiguous(),
        num_classes=arrays.num_classes,
        mean=torch.tensor(mean, dtype=torch.float32) if mean else None,
        std=torch.tensor(std, dtype=torch.float32) if std else None,
        augment=cfg.augment.value,
        identity=arrays.identity or tensor_digest(arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y),
    )
