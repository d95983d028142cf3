"""Model registry: `model.name` -> builder(cfg, input_shape, num_classes) -> nn.Module.

Weights are initialised from a generator seeded by the run seed (`init_weights` under a seeded RNG), never
from leftover global RNG state, so the same seed gives the same w0 in every process. `model=custom` builds
any importable constructor (`ltsearch.models.custom`) and keeps that constructor's own initialisation.

`model.bn_stats=batch` removes the running statistics of every BatchNorm after initialisation
(`drop_running_statistics`): the network then normalises every batch with that batch's own statistics, in
training, evaluation and search alike, and its state dict holds no running_mean / running_var.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from ltsearch.config import BiasInit, BNInit, BNStats, Head, ModelConfig
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


def init_weights(model: nn.Module, bn_init: BNInit = BNInit.ones, bias_init: BiasInit = BiasInit.zeros) -> None:
    """ltsearch's initialisation of a built-in network, drawn in module order from the current (seeded)
    generator.

    Conv and linear weights: Kaiming normal (fan-in, ReLU gain), which is what open_lth's `kaiming_normal`
    and the CTS authors' `conv_fc_init` draw. Biases: zero (`zeros`), or left as the layer's constructor drew
    them (`torch`, what open_lth and the CTS authors do: both re-draw the weight only). BatchNorm: beta 0 and
    gamma 1 (`ones`, PyTorch's own reset) or gamma ~ U(0, 1) (`uniform`: open_lth's `batchnorm_init` for its
    CIFAR ResNets and VGGs, and the CTS authors' `bn_init`).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None and BiasInit(bias_init) == BiasInit.zeros:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and module.affine:
            if BNInit(bn_init) == BNInit.uniform:
                nn.init.uniform_(module.weight, 0.0, 1.0)
            else:
                nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def drop_running_statistics(model: nn.Module) -> None:
    """Make every BatchNorm normalise with the statistics of the batch it sees, in training and evaluation
    alike (`track_running_stats=False`, as the CTS authors build their networks); the running statistics
    are removed, so the state dict no longer holds them."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None


# builders that read `model.head` (the others have one head: ResNets and VGGs average-pool, MLPs and Conv-N
# flatten)
HEAD_OPTION = frozenset({"cnn1d"})


def _check_head(cfg: ModelConfig) -> None:
    if Head(cfg.head) != Head.flatten and cfg.name not in HEAD_OPTION:
        raise ConfigError(f"model.head={Head(cfg.head).value} is an option of model=cnn1d only; model={cfg.name} "
                          f"builds its own head (leave model.head at flatten)")


def _check_init_options(cfg: ModelConfig) -> None:
    """`model=custom` keeps its constructor's initialisation: refuse init options that would not apply."""
    if cfg.name in OWN_INIT and (BNInit(cfg.bn_init) != BNInit.ones or BiasInit(cfg.bias_init) != BiasInit.zeros):
        raise ConfigError(f"model={cfg.name} keeps its constructor's initialisation, so model.bn_init="
                          f"{BNInit(cfg.bn_init).value} / model.bias_init={BiasInit(cfg.bias_init).value} would not "
                          f"apply; leave them at ones / zeros (model.bn_stats applies to any network)")


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build and initialise a model; raise a ConfigError if it does not accept the data's input shape."""
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model.name '{cfg.name}'; known: {', '.join(sorted(MODELS))}")
    _check_init_options(cfg)
    _check_head(cfg)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # inputs too small for the network give zero-sized layers; _check_shapes below says so in one line
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        torch.manual_seed(derive_seed(seed, "init"))
        model = MODELS[cfg.name](cfg, tuple(input_shape), num_classes)
        if cfg.name not in OWN_INIT:
            init_weights(model, cfg.bn_init, cfg.bias_init)
    if BNStats(cfg.bn_stats) == BNStats.batch:
        drop_running_statistics(model)
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
