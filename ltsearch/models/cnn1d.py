"""A small 1-D CNN for MNIST-1D (inputs of shape (1, 40)).

Four conv layers (kernel 5 then 3, stride 1/2/2/2, BatchNorm, ReLU) and a linear head. The channels double
from layer to layer, starting at `model.width` (32: 32/64/128/256 channels). Doubling puts most weights where
the sequence is short, so the network holds enough weights for a ticket at 99.3% sparsity (about a thousand)
to learn the task, for about 1.7x the compute of four layers of 64 channels (40K weights, whose 0.7% is 282).

`model.head` chooses what the head sees: `flatten`, all 5 positions of the last feature map (a 12,800-weight
head, 142K prunable weights in all), or `avgpool`, their mean (a 2,560-weight head, 132K in all, as in a
ResNet). The quickstart uses `avgpool` and leaves the first convolution unpruned (conf/model/cnn1d.yaml):
on the flatten network with every layer pruned, the CTS pruners kept about one weight per first-layer
filter and trailed LTR by 26-36 points (BENCHMARKS.md, Why CTS-KL trailed on the quickstart).
"""

from __future__ import annotations

from torch import Tensor, nn

from ltsearch.config import Head, ModelConfig
from ltsearch.errors import ConfigError


def _block(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(),
    )


class CNN1d(nn.Module):
    def __init__(self, in_channels: int, length: int, widths: list[int], num_classes: int,
                 head: Head = Head.flatten) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.features = nn.Sequential(
            _block(in_channels, c1, 5, 1),
            _block(c1, c2, 3, 2),
            _block(c2, c3, 3, 2),
            _block(c3, c4, 3, 2),
        )
        out_len = length
        for _ in range(3):
            out_len = (out_len - 1) // 2 + 1
        self.pool = Head(head) == Head.avgpool
        self.output = nn.Linear(c4 * (1 if self.pool else out_len), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        return self.output(features.mean(-1) if self.pool else features.flatten(1))


def build_cnn1d(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 2:
        raise ConfigError(f"model 'cnn1d' needs 1-D inputs (channels, length), got shape {input_shape}")
    width = cfg.width or 32
    return CNN1d(input_shape[0], input_shape[1], [width, 2 * width, 4 * width, 8 * width], num_classes, cfg.head)
