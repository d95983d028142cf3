"""The index of an ImageNet-layout folder: which files, which labels, without decoding an image (and the
size they would take decoded, from their headers).

Layouts (the split folder is `val/`, or `test/` when there is no `val/`):

    root/train/<class>/**/*.JPEG     (ImageNet; Tiny-ImageNet keeps them in train/<class>/images/)
    root/val/<class>/**/*.JPEG       (ImageNet's validation set sorted into class folders)
    root/val/images/*.JPEG + root/val/val_annotations.txt   (Tiny-ImageNet: "<file>\\t<class>\\t..." per line)

Classes are the sorted names of the folders under train/. Paths are kept in one numpy byte-string array, so
that DataLoader worker processes forked from the trainer share them without copying (a Python list of
strings would be copied page by page as the workers touch its reference counts).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltsearch.data.sources import IMAGE_SUFFIXES
from ltsearch.errors import DataError
from ltsearch.seeding import generator

ANNOTATIONS = "val_annotations.txt"
HEADER_SAMPLE = 64  # images whose headers estimate the decoded size


@dataclass
class Split:
    """The files of one split and their class indices, in a fixed (sorted) order."""

    files: np.ndarray  # bytes paths
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.fsdecode(self.files[index])


def _images_below(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _split(files: list[str], labels: list[int]) -> Split:
    return Split(np.array([os.fsencode(f) for f in files], dtype=np.bytes_), np.array(labels, dtype=np.int64))


def _by_class_folder(folder: Path, index: dict[str, int]) -> Split:
    files: list[str] = []
    labels: list[int] = []
    for entry in sorted(p for p in folder.iterdir() if p.is_dir()):
        if entry.name not in index:
            raise DataError(f"dataset 'imagenet_folder': {entry} is a class that {folder.parent}/train/ does "
                            f"not have")
        found = _images_below(entry)
        files += found
        labels += [index[entry.name]] * len(found)
    return _split(files, labels)


def _by_annotations(folder: Path, index: dict[str, int]) -> Split:
    files: list[str] = []
    labels: list[int] = []
    for number, line in enumerate((folder / ANNOTATIONS).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"dataset 'imagenet_folder': line {number} of {folder / ANNOTATIONS} names no class "
                            f"of train/ ({line[:80]!r})")
        path = folder / "images" / parts[0]
        if not path.is_file():
            raise DataError(f"dataset 'imagenet_folder': {path}, listed in {folder / ANNOTATIONS}, does not exist")
        files.append(str(path))
        labels.append(index[parts[1]])
    order = np.argsort(np.array(files), kind="stable")
    return _split([files[i] for i in order], [labels[i] for i in order])


def scan(root: Path) -> tuple[list[str], Split, Split]:
    """(classes, train split, evaluation split) of an ImageNet-layout folder."""
    root = Path(root).expanduser()
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"dataset 'imagenet_folder': no folder {train} (expected root/train/<class>/*.JPEG and "
                        f"root/val/<class>/*.JPEG; set dataset.root)")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    held_out = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if held_out is None:
        raise DataError(f"dataset 'imagenet_folder': no folder {root / 'val'} (nor {root / 'test'}) next to {train}")
    train_split = _by_class_folder(train, index)
    held_split = (_by_annotations(held_out, index) if (held_out / ANNOTATIONS).is_file()
                  else _by_class_folder(held_out, index))
    for name, split, folder in (("training", train_split, train), ("evaluation", held_split, held_out)):
        if not len(split):
            raise DataError(f"dataset 'imagenet_folder': no {name} images under {folder}")
    return classes, train_split, held_split


def subset(split: Split, size: int, random: bool) -> Split:
    """The first `size` images of a split, or `size` drawn at random (seeded, kept in order); 0: all."""
    if not size or size >= len(split):
        return split
    idx = (torch.randperm(len(split), generator=generator(0, "train_subset"))[:size].sort().values.numpy()
           if random else np.arange(size))
    return Split(split.files[idx], split.labels[idx])


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux: MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def decoded_bytes(split: Split) -> int:
    """The decoded (uint8 RGB) size of a split, estimated from the headers of evenly spread images (an
    unreadable one is left out here; decoding it reports it)."""
    from PIL import Image

    picks = np.unique(np.linspace(0, len(split) - 1, min(HEADER_SAMPLE, len(split))).astype(int))
    pixels = []
    for i in picks:
        try:
            with Image.open(split.path(int(i))) as img:
                pixels.append(img.size[0] * img.size[1])
        except OSError:
            continue
    return int(3 * np.mean(pixels) * len(split)) if pixels else 0


def identity(root: Path, *splits: Split) -> str:
    """What the folder holds, wherever it lies: every image's path below `root`, size and class (a file
    replaced by one of another size, moved or relabelled is other data; an image rewritten in place with the
    same size is not seen, which would take reading every file)."""
    digest = hashlib.sha256()
    base = os.fsencode(str(Path(root).expanduser().resolve()))
    for split in splits:
        for path, label in zip(split.files, split.labels, strict=True):
            size = os.stat(path).st_size
            digest.update(os.path.relpath(path, base) + b"\0%d\0%d\n" % (size, label))
    return "imagenet_folder:" + digest.hexdigest()
