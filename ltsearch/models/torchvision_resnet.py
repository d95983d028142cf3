"""ResNet-18/34/50/101/152 for ImageNet-sized inputs (7x7 stem, max-pooling, four stages): torchvision's own
`torchvision.models.ResNet`, so the parameter names are torchvision's. A torchvision checkpoint loads into
the network, and a ticket's weights (`final.pt`'s state dict) load back into `torchvision.models.resnet50()`.

Every conv and fully connected weight is prunable (the CTS authors prune them all, first conv and classifier
included); the weights are initialised by ltsearch's scheme (`ltsearch.models.init_weights`) like every
other network here. The CTS authors run the ResNet-18 of this family on Tiny-ImageNet at 64 x 64 pixels.
"""

from __future__ import annotations

from torch import nn

from ltsearch.config import ModelConfig
from ltsearch.errors import ConfigError

# torchvision's constructor of each depth (imported when a network is built: torchvision takes seconds to
# import, and most runs never need it)
DEPTHS: dict[int, str] = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101", 152: "resnet152"}


def build_torchvision_resnet(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ConfigError(f"model 'torchvision_resnet' needs image inputs (C, H, W), got shape {input_shape}")
    depth = cfg.depth or 50
    if depth not in DEPTHS:
        raise ConfigError(f"model 'torchvision_resnet': model.depth must be one of {sorted(DEPTHS)}, got {depth}")
    from torchvision import models

    model = getattr(models, DEPTHS[depth])(weights=None, num_classes=num_classes)
    if input_shape[0] != 3:  # the stem of torchvision's ResNet takes RGB
        model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
