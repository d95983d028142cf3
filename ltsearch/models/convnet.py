"""Conv-2/4/6 of Frankle & Carbin (2019): 3x3 conv pairs with max-pooling, then FC 256-256-classes."""

from __future__ import annotations

from torch import Tensor, nn

from ltsearch.config import ModelConfig
from ltsearch.errors import ConfigError

PLANS: dict[str, list[int | str]] = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}


class ConvNet(nn.Module):
    def __init__(self, plan: list[int | str], input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, height, width = input_shape
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(channels * height * width, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


def build_convnet(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ConfigError(f"model '{cfg.name}' needs image inputs (C, H, W), got shape {input_shape}")
    return ConvNet(PLANS[cfg.name], input_shape, num_classes)
