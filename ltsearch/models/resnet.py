"""CIFAR ResNets: ResNet-20/32/56 (He et al. 2016, widths w/2w/4w) and ResNet-18 (widths 64..512).

Their stem keeps the full resolution (a 3x3 stride-1 conv, no max-pool): made for 32 px images, they compute
every layer of a 224 px image at 49 times CIFAR's cost and memory; `stem_advice` says so (once per run, see
`ltsearch.context`) and names the ImageNet ResNets instead.

`model.shortcut` chooses the projection where the shape changes: `conv1x1` (open_lth, 272,474
parameters for ResNet-20) or `conv3x3` (the CTS authors' variant, stride-2 3x3 convs). Both are followed
by BatchNorm and both projections are prunable.
"""

from __future__ import annotations

from torch import Tensor, nn

from ltsearch.config import ModelConfig, Shortcut
from ltsearch.errors import ConfigError


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        if stride != 1 or c_in != c_out:
            kernel = 1 if shortcut == Shortcut.conv1x1 else 3
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(c_out),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv (3x3, stride 1) + BN, stages of BasicBlocks (first block of later stages has stride 2),
    global average pooling and a linear classifier `fc`."""

    def __init__(self, in_channels: int, widths: list[int], blocks: list[int], shortcut: Shortcut,
                 num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        c_in = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(c_in, width, stride, shortcut))
                c_in = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.relu(self.bn(self.conv(x))))
        return self.fc(self.pool(out).flatten(1))


def _check_image(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ConfigError(f"model '{name}' needs image inputs (C, H, W), got shape {input_shape}")


def build_resnet_cifar(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    _check_image("resnet_cifar", input_shape)
    depth = cfg.depth or 20
    if (depth - 2) % 6 != 0:
        raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n, width = (depth - 2) // 6, cfg.width or 16
    return ResNet(input_shape[0], [width, 2 * width, 4 * width], [n, n, n], cfg.shortcut, num_classes)


def build_resnet18(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    _check_image("resnet18", input_shape)
    width = cfg.width or 64
    return ResNet(input_shape[0], [width, 2 * width, 4 * width, 8 * width], [2, 2, 2, 2], cfg.shortcut,
                  num_classes)


# The input size from which a CIFAR stem is the wrong network: STL-10's 96 px and above (ImageNet, Tiny-ImageNet
# upsampled, image folders of photos).
LARGE_INPUT = 96


def stem_advice(cfg: ModelConfig, input_shape: tuple[int, ...]) -> str | None:
    """A warning when a CIFAR ResNet gets inputs of LARGE_INPUT px or more, else None."""
    if cfg.name not in ("resnet_cifar", "resnet18") or len(input_shape) != 3 or min(input_shape[1:]) < LARGE_INPUT:
        return None
    net = "ResNet-18" if cfg.name == "resnet18" else f"ResNet-{cfg.depth or 20}"
    height, width = input_shape[1:]
    return (f"model {cfg.name} is the CIFAR {net} (3x3 stem, no max-pool), made for 32 px images: on {height}x"
            f"{width} inputs every layer computes at full resolution, {height * width / 1024:.0f}x the time and "
            f"memory of a CIFAR image; for images of {LARGE_INPUT} px or more use model=resnet18_imagenet (or "
            f"model=resnet50: torchvision's ResNets, 7x7 stride-2 stem and max-pool)")
