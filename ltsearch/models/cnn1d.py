"""A small 1-D CNN for MNIST-1D (inputs of shape (1, 40)).

Four conv layers (kernel 5 then 3, stride 1/2/2/2, BatchNorm, ReLU) and a linear head. At width 64 it
has about 40K prunable weights: large enough that a ticket at 99% sparsity keeps a few hundred weights
spread over all layers, small enough that the whole quickstart pipeline runs in a couple of CPU minutes.
"""

from __future__ import annotations

from torch import Tensor, nn

from ltsearch.config import ModelConfig
from ltsearch.errors import ConfigError


def _block(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(),
    )


class CNN1d(nn.Module):
    def __init__(self, in_channels: int, length: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(in_channels, width, 5, 1),
            _block(width, width, 3, 2),
            _block(width, width, 3, 2),
            _block(width, width, 3, 2),
        )
        out_len = length
        for _ in range(3):
            out_len = (out_len - 1) // 2 + 1
        self.output = nn.Linear(width * out_len, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.features(x).flatten(1))


def build_cnn1d(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 2:
        raise ConfigError(f"model 'cnn1d' needs 1-D inputs (channels, length), got shape {input_shape}")
    return CNN1d(input_shape[0], input_shape[1], cfg.width or 64, num_classes)
