"""Image folders read by DataLoader worker processes: ImageNet and Tiny-ImageNet (`dataset=imagenet`,
`dataset=tiny_imagenet`, registry name `imagenet_folder`), images of any size.

The same interface as the in-memory `ltsearch.data.Data` (sizes, `train_batches`, `train_order`,
`train_batches_at`, `eval_batches`, `sample`, `shard`), so training, evaluation and every pruner use it
unchanged. Transforms are torchvision's (transforms.v2 on uint8 tensors, per sample, in the workers):
training `RandomResizedCrop(image_size, scale=crop_scale)` + `RandomHorizontalFlip` (augment
resized_crop_flip), evaluation `Resize(resize_size)` + `CenterCrop(image_size)`; batches travel as uint8
and are normalised on the training device.

Determinism: an epoch's order is one permutation from the epoch's generator, split into global batches of
which each process takes its `Shard` (the same split as `torch.utils.data.DistributedSampler`, without its
padding). Every sample's crop and flip come from its own seed, drawn from the same generator after the
permutation and set around the transform in whichever worker decodes it. So the batches of an epoch depend
on (seed, stream, epoch) alone: not on the number of workers or processes, nor on a resume.

Storage (`runtime.data_storage`): `memory` decodes every image once, at the start, and keeps the uint8
tensors; `stream` reads and decodes the files in every epoch. Both feed the same transforms, so both give
the same batches; memory saves the decoding. `auto` estimates the decoded size from the headers of a
sample of images and keeps them in memory when that is under half of the available memory shared by the
processes of the machine, and says which it chose.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

import ltsearch.distributed as distributed
from ltsearch.config import DatasetConfig, RuntimeConfig
from ltsearch.data.common import mixed_order, sample_indices, to_inputs
from ltsearch.data.folders import Split, available_memory, decoded_bytes, identity, scan, subset
from ltsearch.data.sources import decode
from ltsearch.distributed import Shard
from ltsearch.errors import DataError

if TYPE_CHECKING:  # torchvision is imported where images are transformed (it takes seconds to import)
    from torchvision.transforms import v2

log = logging.getLogger(__name__)

EVAL, RAW = -1, -2  # sample seeds: the evaluation transform; no transform (decoding into memory)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class FolderImages(Dataset):
    """Samples keyed by (index, seed): the decoded image (from memory, else from its file) through the
    training transform seeded by `seed`, the evaluation transform (EVAL) or none (RAW). A file that cannot
    be read comes back as its error message, raised by the loading process (`_batches`)."""

    def __init__(self, split: Split, decoded: list[Tensor] | None, train: v2.Transform, evaluate: v2.Transform):
        self.split, self.decoded, self.train, self.evaluate = split, decoded, train, evaluate

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor | str, int]:
        index, seed = key
        label = int(self.split.labels[index])
        try:
            if self.decoded is not None:
                image = self.decoded[index]
            else:
                path = self.split.path(index)
                image = decode(path, Path(path).read_bytes())
        except (DataError, OSError) as exc:
            return f"dataset 'imagenet_folder': {exc}" if isinstance(exc, OSError) else str(exc), label
        if seed == RAW:
            return image, label
        if seed == EVAL:
            return self.evaluate(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.train(image), label


def _first_error(batch: list[tuple[Tensor | str, int]]) -> tuple[str, str] | None:
    """("error", message) of the batch's first sample that could not be read (see `FolderImages`), or None."""
    return next((("error", item) for item, _ in batch if isinstance(item, str)), None)


def _collate(batch: list[tuple[Tensor | str, int]]) -> Any:
    """A batch (torch's default_collate: in a worker, stacked straight into shared memory), or the first
    error of a sample."""
    return _first_error(batch) or default_collate(batch)


def _packed(batch: list[tuple[Tensor | str, int]]) -> Any:
    """Decoded images of any sizes as one flat uint8 tensor and their shapes: one buffer per batch crosses
    from a worker (a tensor per image would hold a shared-memory file descriptor per image)."""
    error = _first_error(batch)
    if error:
        return error
    images = [item for item, _ in batch]
    return torch.cat([t.flatten() for t in images]), [tuple(t.shape) for t in images]  # type: ignore[union-attr]


@dataclass
class ImageFolderData:
    """An ImageNet-layout folder as a dataset of the `Data` interface (see the module doc)."""

    name: str
    classes: list[str]
    train: Split
    test: Split
    image_size: int
    resize_size: int
    crop_scale: tuple[float, float]
    augment: str
    mean: Tensor
    std: Tensor
    workers: int
    decoded: dict[str, list[Tensor]] | None = None
    identity: str = ""  # what the folder holds, wherever it lies (`folders.identity`)
    shard: Shard = field(default_factory=Shard)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return 3, self.image_size, self.image_size

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def test_size(self) -> int:
        return len(self.test)

    @property
    def nbytes(self) -> int:
        """Memory the decoded images take (0 when streaming)."""
        if self.decoded is None:
            return 0
        return sum(t.numel() for images in self.decoded.values() for t in images)

    def to(self, device: torch.device | str) -> ImageFolderData:
        return self  # the images stay with the workers; batches go to the device as they are made

    def prepare(self, x: Tensor, device: torch.device | None = None) -> Tensor:
        return to_inputs(x, self.mean, self.std, device)

    # -- transforms and loading ------------------------------------------------------------------------------
    def transforms(self) -> tuple[v2.Transform, v2.Transform]:
        """(training transform, evaluation transform)."""
        from torchvision.transforms import v2

        evaluate = v2.Compose([v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.image_size)])
        if self.augment == "resized_crop_flip":
            train = v2.Compose([v2.RandomResizedCrop(self.image_size, scale=self.crop_scale, antialias=True),
                                v2.RandomHorizontalFlip()])
        elif self.augment == "flip":
            train = v2.Compose([evaluate, v2.RandomHorizontalFlip()])
        else:
            train = evaluate
        return train, evaluate

    def _images(self, split: str) -> FolderImages:
        images = self.train if split == "train" else self.test
        return FolderImages(images, None if self.decoded is None else self.decoded[split], *self.transforms())

    def load(self, split: str, keys: list[list[tuple[int, int]]], pin: bool = False
             ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of (index, seed) keys (`train_keys`) as the workers deliver them: uint8 images and labels
        (pinned for a copy to CUDA when `pin`)."""
        if not keys:
            return
        loader = DataLoader(self._images(split), batch_sampler=keys, num_workers=self.workers,
                            collate_fn=_collate, pin_memory=pin, prefetch_factor=4 if self.workers else None)
        for batch in loader:
            if batch[0] == "error":
                raise DataError(batch[1])
            yield batch

    def _batches(self, split: str, keys: list[list[tuple[int, int]]], device: torch.device | None
                 ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of (index, seed) keys through the workers, as network inputs and labels on `device`."""
        for x, y in self.load(split, keys, pin=device is not None and device.type == "cuda"):
            x = self.prepare(x, device)
            yield x, y.to(x.device, non_blocking=True)

    # -- the Data interface -----------------------------------------------------------------------------------
    def train_order(self, batch_size: int, gen: torch.Generator) -> list[Tensor]:
        """The sample indices of one epoch's global batches, from one seeded permutation."""
        return list(torch.randperm(self.train_size, generator=gen).split(batch_size))

    def train_batches(self, batch_size: int, gen: torch.Generator, augment: bool = True,
                      device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled, augmented training batches (this rank's rows of each)."""
        return self._batches("train", self.train_keys(batch_size, gen, augment), device)

    def train_keys(self, batch_size: int, gen: torch.Generator, augment: bool = True) -> list[list[tuple[int, int]]]:
        """One epoch's (index, seed) keys, batch by batch: this rank's rows of each global batch, each sample's
        seed for its crop and flip (EVAL without augmentation)."""
        order = self.train_order(batch_size, gen)
        seeds = torch.randint(0, 1 << 62, (self.train_size,), generator=gen) if augment else None
        keys, start = [], 0
        for idx in order:
            rows = self.shard.take(idx)
            if seeds is None:
                keys.append([(int(i), EVAL) for i in rows])
            else:
                positions = self.shard.take(torch.arange(start, start + len(idx)))
                keys.append([(int(i), int(seeds[p])) for i, p in zip(rows, positions, strict=True)])
            start += len(idx)
        return keys

    def train_batches_at(self, batches: list[Tensor], device: torch.device | None = None
                         ) -> Iterator[tuple[Tensor, Tensor]]:
        """The training samples of each index tensor (this rank's rows), with the evaluation transform."""
        return self._batches("train", [[(int(i), EVAL) for i in self.shard.take(idx)] for idx in batches], device)

    def eval_batches(self, split: str, batch_size: int, device: torch.device | None = None, limit: int = 0,
                     sharded: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """The `split` ("train" or "test") in order, evaluation transform; `limit` > 0 takes a prefix;
        `sharded`: this rank's batches only (every world-th)."""
        size = self.train_size if split == "train" else self.test_size
        n = min(limit, size) if limit else size
        keys = [[(i, EVAL) for i in range(start, min(start + batch_size, n))] for start in range(0, n, batch_size)]
        return self._batches(split, keys[self.shard.rank::self.shard.world] if sharded else keys, device)

    def sample(self, count: int, seed: int, *keys: object, per_class: bool = False,
               device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """A seeded training subset with the evaluation transform (see `common.sample_indices`)."""
        idx = sample_indices(torch.from_numpy(self.train.labels), self.num_classes, count, seed, *keys,
                             per_class=per_class)
        batches = [[(int(i), EVAL) for i in part] for part in idx.split(256)]
        xs, ys = zip(*self._batches("train", batches, device), strict=True)
        return torch.cat(xs), torch.cat(ys)


# -- building it ------------------------------------------------------------------------------------------------
def decode_all(data: ImageFolderData, split: str) -> list[Tensor]:
    """Every image of a split decoded (uint8 RGB), by the workers."""
    images = data._images(split)
    keys = [[(i, RAW) for i in range(start, min(start + 64, len(images)))] for start in range(0, len(images), 64)]
    out: list[Tensor] = []
    for batch in DataLoader(images, batch_sampler=keys, num_workers=data.workers, collate_fn=_packed):
        if batch[0] == "error":
            raise DataError(batch[1])
        flat, shapes = batch
        flat = flat.clone()  # into this process's own memory
        sizes = [int(np.prod(shape)) for shape in shapes]
        out += [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]
    return out


def default_workers() -> int:
    """DataLoader workers per training process: the machine's cores shared by its processes, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) // distributed.local_world_size() - 1))


def load_image_folder(cfg: DatasetConfig, runtime: RuntimeConfig) -> ImageFolderData:
    """The folder `cfg.root`, kept in memory or streamed as `runtime.data_storage` says (logged)."""
    if cfg.augment.value in ("crop_flip", "crop_flip_zero"):
        raise DataError("dataset 'imagenet_folder' augments with augment=resized_crop_flip (or flip, or none); "
                        f"{cfg.augment.value} pads and crops images of one fixed size")
    classes, train, test = scan(Path(cfg.root))
    # the evaluation split in a fixed random order, not class by class (`common.mixed_order`)
    order = mixed_order(len(test)).numpy()
    test = Split(test.files[order], test.labels[order])
    train, test = subset(train, cfg.train_subset, True), subset(test, cfg.test_subset, False)
    workers = default_workers() if runtime.data_workers < 0 else runtime.data_workers
    data = ImageFolderData(
        name=cfg.name, classes=classes, train=train, test=test, image_size=cfg.image_size,
        resize_size=cfg.resize_size, crop_scale=(cfg.crop_scale[0], cfg.crop_scale[1]), augment=cfg.augment.value,
        mean=torch.tensor(cfg.mean or IMAGENET_MEAN), std=torch.tensor(cfg.std or IMAGENET_STD), workers=workers,
        identity=identity(Path(cfg.root), train, test))
    what = f"dataset {cfg.root}: {len(train)} training and {len(test)} evaluation images in {len(classes)} classes"
    storage = runtime.data_storage
    if storage == "auto":
        estimate = decoded_bytes(train) + decoded_bytes(test)
        budget = available_memory() // 2 // distributed.local_world_size()
        storage = "memory" if estimate < budget else "stream"
        what += (f", about {estimate / 2**30:.2f} GiB decoded; the memory budget is {budget / 2**30:.1f} GiB "
                 f"per process (half of the available memory)")
    if storage == "memory":
        log.info("%s: decoding them once into memory with %d workers (runtime.data_storage=%s; =stream reads "
                 "the files every epoch instead)", what, workers, runtime.data_storage)
        return replace(data, decoded={"train": decode_all(data, "train"), "test": decode_all(data, "test")})
    log.info("%s: streaming them from disk with %d DataLoader workers per process (runtime.data_storage=%s; "
             "=memory decodes them once instead)", what, workers, runtime.data_storage)
    return data
