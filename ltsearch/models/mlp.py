"""Fully connected networks: LeNet-300-100 (hidden=[300, 100]) and MLPs for MNIST-1D."""

from __future__ import annotations

import math

from torch import Tensor, nn

from ltsearch.config import ModelConfig
from ltsearch.errors import ConfigError


class MLP(nn.Module):
    """Flatten, then Linear+ReLU per hidden size, then a linear output layer named `output`."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.output = nn.Linear(sizes[-1], num_classes)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.output(x)


def build_mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if not cfg.hidden:
        raise ConfigError("model 'mlp' needs model.hidden, e.g. [300, 100]")
    return MLP(math.prod(input_shape), list(cfg.hidden), num_classes)
