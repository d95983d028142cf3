"""Data a user already holds (tensors, a Dataset, a DataLoader) as a `Data` object, for the Python API.

Everything is gathered into memory once, as ltsearch holds every dataset; inputs are used as given (no
normalisation, no augmentation: the user's transforms already ran).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ltsearch.data import Data
from ltsearch.errors import DataError

GATHER_BATCH = 512


def _gather(source: Any, what: str) -> tuple[Tensor, Tensor]:
    """(inputs, integer labels) of `source`: a pair of tensors, a map-style Dataset or an iterable of batches."""
    if isinstance(source, tuple | list) and len(source) == 2 and all(isinstance(t, Tensor) for t in source):
        x, y = source
    else:
        if isinstance(source, Dataset) and not isinstance(source, DataLoader):
            source = DataLoader(source, batch_size=GATHER_BATCH, shuffle=False)
        try:
            batches = [tuple(batch) for batch in source]
        except TypeError as exc:
            raise DataError(f"{what}: expected (inputs, labels) tensors, a torch Dataset or a DataLoader, got "
                            f"{type(source).__name__}") from exc
        if not batches or any(len(b) != 2 or not all(isinstance(t, Tensor) for t in b) for b in batches):
            raise DataError(f"{what}: every item must be an (input tensor, label) pair (give a torchvision "
                            f"dataset transform=torchvision.transforms.ToTensor())")
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if x.shape[0] != y.shape[0] or y.dim() != 1 or y.is_floating_point():
        raise DataError(f"{what}: inputs {tuple(x.shape)} and labels {tuple(y.shape)} must pair up, with one "
                        f"integer class label per input")
    if x.shape[0] == 0:
        raise DataError(f"{what} is empty")
    return x.float().contiguous(), y.long().contiguous()


def user_data(train: Any, test: Any = None, num_classes: int = 0) -> Data:
    """A `Data` of the user's splits; without `test`, the training split also serves as the test split.
    `num_classes` defaults to the largest label + 1."""
    if isinstance(train, Data):
        return train
    train_x, train_y = _gather(train, "train_data")
    test_x, test_y = (train_x, train_y) if test is None else _gather(test, "test_data")
    if test_x.shape[1:] != train_x.shape[1:]:
        raise DataError(f"test_data inputs {tuple(test_x.shape[1:])} differ from train_data inputs "
                        f"{tuple(train_x.shape[1:])}")
    classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    if int(min(train_y.min(), test_y.min())) < 0 or int(max(train_y.max(), test_y.max())) >= classes:
        raise DataError(f"labels must lie in [0, num_classes={classes})")
    return Data(name="user", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, num_classes=classes,
                mean=None, std=None, augment="none")
