"""Model registry: `model.name` -> builder(cfg, input_shape, num_classes) -> nn.Module.

Weights are initialised from a generator seeded by the run seed (`init_model`), never from leftover
global RNG state, so the same seed gives the same w0 in every process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from ltsearch.config import ModelConfig
from ltsearch.errors import ConfigError
from ltsearch.models.cnn1d import build_cnn1d
from ltsearch.models.convnet import build_convnet
from ltsearch.models.mlp import build_mlp
from ltsearch.models.resnet import build_resnet18, build_resnet_cifar
from ltsearch.models.torchvision_resnet import build_torchvision_resnet
from ltsearch.models.vgg import build_vgg
from ltsearch.seeding import derive_seed

Builder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]

MODELS: dict[str, Builder] = {
    "mlp": build_mlp,
    "cnn1d": build_cnn1d,
    "conv2": build_convnet,
    "conv4": build_convnet,
    "conv6": build_convnet,
    "resnet_cifar": build_resnet_cifar,
    "resnet18": build_resnet18,
    "torchvision_resnet": build_torchvision_resnet,
    "vgg": build_vgg,
}


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU) conv/linear weights, zero biases, BN at identity (open_lth's scheme)."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build and initialise a model; raise a ConfigError if it does not accept the data's input shape."""
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model.name '{cfg.name}'; known: {', '.join(sorted(MODELS))}")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # inputs too small for the network give zero-sized layers; _check_shapes below says so in one line
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        torch.manual_seed(derive_seed(seed, "init"))
        model = MODELS[cfg.name](cfg, tuple(input_shape), num_classes)
        init_weights(model)
    _check_shapes(model, cfg.name, input_shape, num_classes)
    return model


def _check_shapes(model: nn.Module, name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except RuntimeError as exc:
        raise ConfigError(
            f"model '{name}' does not accept inputs of shape {tuple(input_shape)} from this dataset "
            f"({str(exc).splitlines()[0][:160]})"
        ) from exc
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"model '{name}' outputs shape {tuple(out.shape[1:])}, expected ({num_classes},)")
