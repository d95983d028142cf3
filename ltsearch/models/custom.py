"""`model=custom`: any importable constructor (torchvision, timm, your own module) as the network.

`model._target_` names the callable (`torchvision.models.resnet18`, `my_package.nets.Net`) and
`model.args` its keyword arguments (`+model.args.width=32` on the command line; nested `_target_` entries
are built first, as `hydra.utils.instantiate` does). When the callable takes a `num_classes` argument and
`model.args` does not set it, the dataset's class count is passed. The constructor's own initialisation
is kept (run under the seeded generator, so w0 is still a function of the seed); prunable weights follow
the usual rule (every conv and linear weight not matched by a `model.exclude` glob).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from ltsearch.config import ModelConfig
from ltsearch.errors import ConfigError, first_line

CUSTOM = "custom"
TARGET_HINT = "model._target_=<module>.<callable>, e.g. model._target_=torchvision.models.resnet18"


@dataclass
class CustomModelConfig(ModelConfig):
    """`_target_`: dotted path of a callable returning an `nn.Module`; `args`: its keyword arguments."""

    _target_: str = ""
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self._target_:
            raise ValueError(f"model=custom needs {TARGET_HINT}")


def target_name(cfg: Any) -> str:
    """The `_target_` of a model config (a dataclass or a plain dict); "" for the built-in models."""
    return str((cfg.get("_target_") if isinstance(cfg, dict) else getattr(cfg, "_target_", "")) or "")


def locate(target: str) -> Any:
    """The object at a dotted path: the longest importable module prefix, then attributes. Modules in the
    working directory are importable too (as with `python -m`), after everything on the path."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if exc.name is None or not ".".join(parts[:cut]).startswith(exc.name):
                raise ConfigError(f"model._target_={target}: importing it failed ({exc})") from exc
            continue
        except Exception as exc:  # the module exists but raised while importing
            raise ConfigError(f"model._target_={target}: importing it failed ({first_line(exc, 200)})") from exc
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigError(f"model._target_={target}: no such module or attribute (a dotted path like "
                      f"torchvision.models.resnet18, importable from this Python environment)")


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: do not guess
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def build_custom(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    target = target_name(cfg)
    if not target:
        raise ConfigError(f"model=custom needs {TARGET_HINT}")
    fn = locate(target)
    if not callable(fn):
        raise ConfigError(f"model._target_={target} is not callable")
    args = dict(getattr(cfg, "args", {}) or {})
    if "num_classes" not in args and _accepts(fn, "num_classes"):
        args["num_classes"] = num_classes
    try:
        model = instantiate({"_target_": target, **args}, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"model._target_={target} with model.args={args} failed: {first_line(cause, 200)}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
