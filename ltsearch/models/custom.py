"""`model=custom`: any importable constructor (torchvision, timm, your own module) as the network.

`model._target_` names the callable (`torchvision.models.resnet18`, `my_package.nets.Net`) and
`model.args` its keyword arguments. On the command line an argument is written beside `_target_`, as
`hydra.utils.instantiate` reads a config (`model.width=32`, `+model.width=32`), or under `args`
(`+model.args.width=32`): `constructor_overrides` rewrites the first form into the second before Hydra
composes the config, whose schema has no room for keys it does not know. Nested `_target_` entries are
built first, as `hydra.utils.instantiate` does. When the callable takes a `num_classes` argument and
`model.args` does not set it, the dataset's class count is passed. The constructor's own initialisation
is kept (run under the seeded generator, so w0 is still a function of the seed); prunable weights follow
the usual rule (every conv and linear weight not matched by a `model.exclude` glob).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from ltsearch.config import Head, ModelConfig, Shortcut
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
        builtin = {"depth": self.depth, "width": self.width, "hidden": self.hidden,
                   "shortcut": None if self.shortcut == Shortcut.conv1x1 else self.shortcut,
                   "head": None if self.head == Head.flatten else self.head}
        for key, value in builtin.items():
            if value:  # set in a config file: the constructor would never see it
                raise ValueError(f"model.{key}={getattr(value, 'name', value)} is a setting of the built-in models, "
                                 f"which model=custom does not read: {argument_hint(key)}")


# Settings of the built-in architectures, which a constructor named by `_target_` does not read: beside
# `_target_` these names are the constructor's arguments, like every other name that is not a setting.
BUILTIN_ONLY = frozenset({"depth", "width", "hidden", "shortcut", "head"})


def custom_settings() -> frozenset[str]:
    """The keys of `model` that are settings of model=custom itself (name, `_target_`, args, exclude, ...)."""
    return frozenset(f.name for f in fields(CustomModelConfig)) - BUILTIN_ONLY


def argument_hint(name: str) -> str:
    """How to pass the constructor argument `name`: what every refusal of a custom model's key says."""
    return (f"a constructor argument is model.{name}=VALUE or +model.args.{name}=VALUE on the command line, "
            f"model.args.{name} in a config file")


def constructor_overrides(overrides: Sequence[str]) -> list[str]:
    """With model=custom, a key beside model._target_ that is not a setting of model=custom is a constructor
    argument, as `hydra.utils.instantiate` reads a config: `model.num_classes=10`, `+model.num_classes=10` and
    `++model.num_classes=10` become `++model.args.num_classes=10` (add or replace); `model.args.NAME=VALUE`,
    which Hydra refuses without a `+`, becomes `++model.args.NAME=VALUE`; `~model.NAME` becomes
    `~model.args.NAME`. Anything else is left as it is (applying this twice changes nothing)."""
    chosen = [o.lstrip("+").partition("=")[2] for o in overrides if o.lstrip("+").startswith("model=")]
    if chosen[-1:] != [CUSTOM]:
        return list(overrides)
    settings = custom_settings()
    out = []
    for text in overrides:
        prefix = text[: len(text) - len(text.lstrip("+~"))]
        key, sep, value = text[len(prefix):].partition("=")
        parts = key.split(".")
        if parts[0] != "model" or len(parts) < 2 or "@" in key or prefix not in ("", "+", "++", "~"):
            out.append(text)
        elif parts[1] == "args" and len(parts) > 2:
            out.append(f"++{key}{sep}{value}" if prefix == "" else text)
        elif parts[1] not in settings:
            out.append(f"{'~' if prefix == '~' else '++'}model.args.{'.'.join(parts[1:])}{sep}{value}")
        else:
            out.append(text)
    return out


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
        near = {a: difflib.get_close_matches(a, sorted(custom_settings()), n=1) for a in args}
        typo = "".join(f"; did you mean model.{m[0]}? (model.{a} went to the constructor)" for a, m in near.items() if m)
        raise ConfigError(f"model._target_={target} with model.args={args} failed: {first_line(cause, 200)}{typo}") \
            from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
