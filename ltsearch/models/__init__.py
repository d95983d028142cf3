"""Model registry: `model.name` -> builder(cfg, input_shape, num_classes) -> nn.Module.

Weights are initialised from a generator seeded by the run seed (`init_weights` under a seeded RNG), never
from leftover global RNG state, so the same seed gives the same w0 in every process. `model=custom` builds
any importable constructor (`ltsearch.models.custom`) and keeps that constructor's own initialisation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from ltsearch.config import ModelConfig
from ltsearch.errors import ConfigError
from ltsearch.models.cnn1d import build_cnn1d
from ltsearch.models.convnet import build_convnet
from ltsearch.models.custom import CUSTOM, CustomModelConfig, build_custom
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
    CUSTOM: build_custom,
}
# builders whose networks keep their own initialisation instead of `init_weights`
OWN_INIT = frozenset({CUSTOM})


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
        if cfg.name not in OWN_INIT:
            init_weights(model)
    check_shapes(model, cfg.name, input_shape, num_classes)
    return model


def model_config(container: dict[str, Any]) -> ModelConfig:
    """The typed model config of a recorded (plain dict) one, with the schema its builder uses."""
    schema = CustomModelConfig if container.get("name") == CUSTOM else ModelConfig
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), container))  # type: ignore[return-value]


def check_shapes(model: nn.Module, name: str, input_shape: tuple[int, ...], num_classes: int,
                 device: torch.device | None = None) -> None:
    """One forward pass of two zero inputs: the model must take the data's inputs and give one logit per
    class (a ConfigError names the mismatch)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape, device=device))
    except RuntimeError as exc:
        raise ConfigError(
            f"model '{name}' does not accept inputs of shape {tuple(input_shape)} from this dataset "
            f"({str(exc).splitlines()[0][:160]})"
        ) from exc
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"model '{name}' outputs shape {tuple(out.shape[1:])}, expected ({num_classes},)")
