"""CIFAR VGG-11/16/19 with BatchNorm: conv3x3-BN-ReLU stacks, max-pooling, global average pooling and
one Linear(512, classes) named `classifier` (excluded from pruning by the presets, as in open_lth)."""

from __future__ import annotations

from torch import Tensor, nn

from ltsearch.config import ModelConfig
from ltsearch.errors import ConfigError

PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, plan: list[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                           nn.BatchNorm2d(int(item)), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def build_vgg(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ConfigError(f"model 'vgg' needs image inputs (C, H, W), got shape {input_shape}")
    depth = cfg.depth or 16
    if depth not in PLANS:
        raise ConfigError(f"VGG depth must be one of {sorted(PLANS)}, got {depth}")
    return VGG(PLANS[depth], input_shape[0], num_classes)
