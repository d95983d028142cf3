"""Composition and validation of a config against the schema and the registries (the app layer: it may
import every registry, which the schema in `ltsearch.config` must not).

`register_configs()` puts the schemas into Hydra's ConfigStore; `to_config(cfg)` turns a composed config
into the typed `Config` (types, ranges, unknown keys) and checks every name that refers to a registry;
`compose(*overrides)` does what `ltsearch run` does without a run folder, for tests, scripts and the API.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from ltsearch.config import (
    Config,
    DatasetConfig,
    ModelConfig,
    ObjectiveConfig,
    TrainConfig,
    config_container,
    flatten,
)
from ltsearch.data import DATASETS, FOLDER_DATASETS
from ltsearch.distributed import LAUNCH_TIME_ENV
from ltsearch.errors import ConfigError, first_line
from ltsearch.logfile import has_control, one_line
from ltsearch.loggers import check_logger_extras
from ltsearch.models import MODELS
from ltsearch.models.custom import CustomModelConfig, argument_hint, constructor_overrides
from ltsearch.objectives import OBJECTIVES
from ltsearch.paths import job_folder
from ltsearch.pruners import PRUNERS
from ltsearch.stages import STAGES


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore, and the resolver of sweep job folder names (idempotent).

    Root-level names (no group), so that schemas never appear as options in --help or glob() sweeps; a
    group file extends its schema with `defaults: [/schema_<group>@_here_, _self_]`."""
    OmegaConf.register_new_resolver("ltsearch_job_folder", job_folder, replace=True)  # hydra.sweep.subdir
    cs = ConfigStore.instance()
    cs.store(name="ltsearch_schema", node=Config)
    cs.store(name="schema_model", node=ModelConfig)
    cs.store(name="schema_model_custom", node=CustomModelConfig)
    cs.store(name="schema_dataset", node=DatasetConfig)
    cs.store(name="schema_train", node=TrainConfig)
    cs.store(name="schema_objective", node=ObjectiveConfig)
    for name, pruner_cls in PRUNERS.items():
        cs.store(name=f"schema_pruner_{name}", node=pruner_cls.Config)
    OmegaConf.register_new_resolver("ltsearch_now", launch_time, use_cache=True, replace=True)


def launch_time(pattern: str) -> str:
    """`${ltsearch_now:PATTERN}`: the time formatted like Hydra's `${now:PATTERN}`; in a distributed run rank
    0's start time (`ltsearch.distributed.LAUNCH_TIME_ENV`, set by the CLI), so every rank names the same
    run folder."""
    stamp = os.environ.get(LAUNCH_TIME_ENV)
    return (datetime.fromtimestamp(float(stamp)) if stamp else datetime.now()).strftime(pattern)


def to_config(cfg: DictConfig | Config) -> Config:
    """Validate a composed config (types, enums, ranges, names) and return the typed object."""
    if isinstance(cfg, Config):
        return cfg
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ValueError) else None
        raise ConfigError(f"invalid config: {cause or first_line(exc)}") from exc
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc
    assert isinstance(obj, Config)
    _check_unknown_keys(cfg, obj)
    _check_one_line(obj)
    check_names(obj)
    return obj


def _check_one_line(obj: Config) -> None:
    """No string of the config holds a control character: config strings name things and paths, and they go
    into logs, folder names and tables, where a line break would forge a line."""
    for key, value in flatten(config_container(obj)).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and has_control(item):
                raise ConfigError(f"invalid config: {key}={one_line(item)} holds a line break or another control "
                                  f"character; config strings must be one line")


def _check_unknown_keys(cfg: DictConfig, obj: Config) -> None:
    """A key added with `+` (e.g. `+sparsty=0.5`) that no schema has would be dropped silently: refuse it."""
    given = flatten(OmegaConf.to_container(cfg, resolve=False))
    known = flatten(config_container(obj))
    unknown = sorted(k for k in given if k not in known and not any(k.startswith(f"{kk}.") for kk in known))
    if unknown:
        raise ConfigError(unknown_keys_message(unknown, known))


def unknown_keys_message(unknown: Sequence[str], known: Iterable[str]) -> str:
    """One line naming keys no schema has, each with the nearest known key when one is close (a typo)."""
    candidates = sorted(set(known))
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, candidates, n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return (f"unknown config key{'s' if len(named) > 1 else ''} {', '.join(named)}: ltsearch has no such "
            f"setting (`ltsearch run --cfg job` prints every key)")


def check_names(cfg: Config) -> None:
    """Every name that refers to a registry must be in it, and every chosen logger installed."""
    registries: tuple[tuple[str, str, dict[str, Any]], ...] = (
        ("model.name", cfg.model.name, MODELS),
        ("dataset.name", cfg.dataset.name, {**DATASETS, **FOLDER_DATASETS}),
        ("pruner.name", cfg.pruner.name, PRUNERS),
        ("objective.name", cfg.objective.name, OBJECTIVES),
    )
    for key, name, known in registries:
        if name not in known:
            raise ConfigError(f"unknown {key} '{name}'; known: {', '.join(sorted(known))}")
    check_logger_extras(cfg.logger)
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(map(repr, unknown))} in stages; known (in the order they "
                          f"run): {', '.join(STAGES)}")


def method_label(cfg: DictConfig, choices: dict[str, Any]) -> str:
    """The method's name in reports: pruner.label, else the chosen pruner option (e.g. cts_kl)."""
    return str(OmegaConf.select(cfg, "pruner.label") or choices.get("pruner") or cfg.pruner.name)


def compose(*overrides: str) -> Config:
    """Compose conf/config.yaml with overrides as `ltsearch run` does, and validate it (no run directory,
    no logging setup, no multirun)."""
    return compose_labelled(*overrides)[0]


def compose_labelled(*overrides: str) -> tuple[Config, str]:
    """`compose`, and the method's name as `ltsearch run` would record it (see `method_label`). Hydra's
    composition errors (an unknown option or key) become one-line `ConfigError`s."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException

    register_configs()
    try:
        with initialize_config_module(config_module="ltsearch.conf", version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=constructor_overrides(overrides),
                                return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"invalid config: {error_line(exc)}") from exc
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return to_config(cfg), method_label(cfg, choices)


# -- Hydra's composition errors in one line ----------------------------------------------------------------------
def error_line(exc: BaseException) -> str:
    """A config error in one line, in ltsearch's words where Hydra's take several (the options of a group
    instead of the config search path, the keys near an unknown one instead of OmegaConf's full_key and
    object_type lines)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        return f"{group}={name}: no such option; the options of {group} are {', '.join(exc.options)}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override '{exc.override}': {_join(exc.message)}"
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and cause.full_key:
        return _unknown_key(cause)
    if cause is not exc:
        return f"{_join(str(exc)).rstrip('.')}: {_join(cause.msg or str(cause))}"
    return _join(str(exc))


def _unknown_key(error: OmegaConfBaseException) -> str:
    """A key the schema does not have: the nearest keys beside it, or how a custom model takes arguments."""
    full_key = str(error.full_key)
    parent, _, key = full_key.rpartition(".")
    if error.object_type is CustomModelConfig:
        return f"{full_key} is not a setting of model=custom: {argument_hint(key)}"
    if full_key == "model._target_":
        return "model._target_ names the constructor of model=custom: add model=custom to the overrides"
    node = error.parent_node
    siblings = [str(k) for k in node] if isinstance(node, DictConfig) else []
    return unknown_keys_message([full_key], [f"{parent}.{k}" if parent else k for k in siblings])


def _join(text: str) -> str:
    """A multi-line message as one line: its lines joined, OmegaConf's indented details (full_key,
    object_type) and Hydra's config search path left out."""
    lines: list[str] = []
    for line in str(text).splitlines():
        if line.startswith("Config search path"):
            break
        if line.strip() and not line[:1].isspace():
            lines.append(line.strip())
    return "; ".join([line.rstrip(".") for line in lines[:-1]] + lines[-1:])
