"""ResNet-18 and ResNet-50 of the ImageNet family (`model=resnet18_imagenet`, `model=resnet50`): torchvision's
classes and parameter names, so checkpoints go both ways; every conv and FC weight is prunable."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from ltsearch.config import ModelConfig
from ltsearch.errors import ConfigError
from ltsearch.masking import attach_masks, plain_state_dict, prunable_modules
from ltsearch.models import build_model
from tests.conftest import make_config


def test_resnet50_has_torchvision_names_and_loads_a_torchvision_checkpoint():
    model = build_model(ModelConfig(name="torchvision_resnet", depth=50), (3, 64, 64), 10, seed=0)
    reference = models.resnet50(num_classes=10)
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict())  # strict
    x = torch.randn(2, 3, 64, 64)
    model.eval(), reference.eval()
    assert torch.equal(model(x), reference(x))


def test_a_ticket_loads_back_into_torchvision():
    model = build_model(ModelConfig(name="torchvision_resnet", depth=18), (3, 64, 64), 200, seed=0)
    prunable = prunable_modules(model)
    assert len(prunable) == 21  # 17 convs in the blocks and the stem, 3 downsample convs, the classifier
    assert {"conv1.weight", "fc.weight", "layer2.0.downsample.0.weight"} <= set(prunable)
    gen = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(m.weight.shape, generator=gen) < 0.2 for name, m in prunable.items()}
    attach_masks(model, masks)
    ticket = plain_state_dict(model)
    target = models.resnet18(num_classes=200)
    target.load_state_dict(ticket)  # strict: the same names
    weight = target.layer1[0].conv1.weight
    assert torch.equal(weight, ticket["layer1.0.conv1.weight"]) and not weight[~masks["layer1.0.conv1.weight"]].any()
    x = torch.randn(2, 3, 64, 64)
    model.eval(), target.eval()
    assert torch.allclose(model(x), target(x), atol=1e-6)


def test_presets_compose_with_the_authors_protocols():
    cfg = make_config("experiment=resnet50_imagenet", "dataset.root=/data/imagenet")
    assert (cfg.model.name, cfg.model.depth, cfg.dataset.name) == ("torchvision_resnet", 50, "imagenet_folder")
    t = cfg.train
    assert (t.lr, t.momentum, t.warmup_epochs, t.milestones, t.epochs, t.batch_size, t.weight_decay, t.rewind_epoch) \
        == (0.4, 0.9, 5, [30, 60, 80], 90, 1024, 1e-4, 18)
    cfg = make_config("experiment=resnet18_tinyimagenet", "dataset.root=/data/tiny")
    t = cfg.train
    assert (cfg.model.depth, cfg.dataset.image_size) == (18, 64)
    assert (t.lr, t.warmup_epochs, t.milestones, t.epochs, t.batch_size, t.weight_decay) \
        == (0.4, 10, [60, 120, 160], 200, 512, 1e-4)
    assert make_config("experiment=resnet50_imagenet", "pruner=ltr_imagenet", "dataset.root=/d").pruner.rate == 0.4642
    for preset in ("resnet20_cifar100", "vgg16_cifar100"):
        cfg = make_config(f"experiment={preset}")
        assert cfg.dataset.name == "cifar100" and cfg.train.epochs == 160


def test_an_unknown_depth_is_refused():
    with pytest.raises(ConfigError, match="model.depth must be one of"):
        build_model(ModelConfig(name="torchvision_resnet", depth=20), (3, 32, 32), 10, seed=0)
