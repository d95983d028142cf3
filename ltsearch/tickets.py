"""Tickets in and out of networks: a finished run's ticket or a ticket file in a network, with the header its
ticket file gets; writing a file only after checking that it can be written. What `ltsearch.load_ticket`,
`ltsearch.save_ticket` and `ltsearch export` read and write through.

A run folder holds two sets of ticket weights: `ticket`, where retraining starts (rewind/ticket.pt), and
`trained`, the retrained ticket (retrain/final.pt). Its network is rebuilt from the run's recorded model
config; a ticket file's from the model config in its header, except a `model=custom` network: a file may
come from anyone, and ltsearch never imports and calls a constructor a file names (pass the network
instead).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

import ltsearch.ticketfile as ticketfile
from ltsearch.config import DatasetConfig
from ltsearch.errors import ArtifactError, ConfigError, LtsearchError, StorageError, first_line
from ltsearch.masking import attach_masks, load_plain_state_dict, masks_of, plain_state_dict
from ltsearch.models import build_model, model_config
from ltsearch.paths import EVALUATE, FINAL, RESULTS, RETRAIN, REWIND, TICKET, TICKET_FILE
from ltsearch.rundir import ArtifactDir, read_record
from ltsearch.storage import atomic_write

WEIGHTS = {"ticket": (REWIND, TICKET), "trained": (RETRAIN, FINAL)}


# -- sources -----------------------------------------------------------------------------------------------------
def stage_artifact(run_dir: Path, stage: str, name: str) -> Any:
    folder = ArtifactDir(run_dir / stage)
    if not folder.done:
        raise ArtifactError(f"{run_dir}: stage {stage} is not complete, so it holds no {name} (ltsearch resume "
                            f"{run_dir} finishes the run)")
    return folder.load_tensors(name)


def run_network(run_dir: Path, record: dict[str, Any], saved: dict[str, Any]) -> nn.Module:
    """The run's network, built from its recorded config (shapes from the ticket, or else from the data)."""
    config = record["config"]
    if "input_shape" in saved:
        shape, classes = tuple(saved["input_shape"]), int(saved["num_classes"])
    else:  # a ticket written before the shapes were recorded with it
        data = load_data(config["dataset"])
        shape, classes = data.input_shape, data.num_classes
    return build_model(model_config(config["model"]), shape, classes, int(config["seed"]))


def load_data(dataset: dict[str, Any], root: str | None = None) -> Any:
    """The dataset of a recorded (plain dict) config, `root` replacing its dataset.root when given."""
    from ltsearch.data import build_data

    fields = {**dataset, **({"root": root} if root else {})}
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), fields))
    return build_data(cfg)  # type: ignore[arg-type]


@dataclass
class Exportable:
    """A masked network ready to export, with its ticket file header and the dataset it was tested on."""

    model: nn.Module
    meta: dict[str, Any]
    dataset: dict[str, Any]


def run_ticket(run_dir: str | Path, weights: str = "ticket", model: nn.Module | None = None) -> nn.Module:
    """The `weights` of a finished run in its network (or in `model`), masks attached."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r}: choose {' or '.join(map(repr, WEIGHTS))}")
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    saved = stage_artifact(run_dir, *WEIGHTS[weights])
    if model is None:
        model = run_network(run_dir, record, saved if weights == "ticket" else stage_artifact(run_dir, REWIND, TICKET))
    try:
        load_plain_state_dict(model, saved["state_dict"])
        attach_masks(model, saved["masks"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"the {weights} weights of {run_dir} do not fit this model ({first_line(exc)})") from exc
    return model


def from_run(run_dir: str | Path, weights: str = "trained") -> Exportable:
    """`run_ticket` with the header of its ticket file (what the network expects as input: from the ticket
    file the evaluate stage wrote, else from the run's data)."""
    net = run_ticket(run_dir, weights)
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    config = record["config"]
    spec = _recorded_input(run_dir) or _input_of_data(config["dataset"])
    meta = ticketfile.run_meta(config, weights=weights, label=record.get("label") or config["pruner"]["name"],
                               input_shape=tuple(spec["shape"]), num_classes=int(spec["num_classes"]),
                               mean=spec["mean"], std=spec["std"], test_acc=_tested_accuracy(run_dir, weights))
    return Exportable(net, meta, config["dataset"])


def _recorded_input(run_dir: Path) -> dict[str, Any] | None:
    """The input description of the ticket file the evaluate stage wrote (same run, same data), if any."""
    path = run_dir / EVALUATE / TICKET_FILE
    if not (ArtifactDir(run_dir / EVALUATE).done and path.is_file()):
        return None
    try:
        meta = ticketfile.read(path).meta
        return {**meta["input"], "num_classes": meta["num_classes"]}
    except (ArtifactError, KeyError, TypeError):  # damaged: the data says the same
        return None


def _input_of_data(dataset: dict[str, Any]) -> dict[str, Any]:
    data = load_data(dataset)
    return {"shape": list(data.input_shape), "num_classes": data.num_classes, "mean": ticketfile.floats(data.mean),
            "std": ticketfile.floats(data.std)}


def _tested_accuracy(run_dir: Path, weights: str) -> float | None:
    """The test accuracy the evaluate stage measured, when it measured these weights."""
    folder = ArtifactDir(run_dir / EVALUATE)
    if not folder.done:
        return None
    results = folder.load_json(RESULTS)
    return results.get("test_acc") if results.get("weights") == WEIGHTS[weights][0] else None


def network(ticket: ticketfile.TicketFile, model: nn.Module | None = None, path: Path | None = None) -> nn.Module:
    """The file's ticket in `model` (its parameter names and shapes must match) or in a network built from the
    file's model config; masks attached, on the CPU."""
    where = path or "the ticket file"
    if model is None:
        model = _build(ticket.meta, where)
    own = {k: tuple(v.shape) for k, v in plain_state_dict(model).items()}
    problem = ticketfile.fit_problem(own, ticket)
    if problem:
        raise ConfigError(f"{where} does not fit this model: {problem}")
    try:
        load_plain_state_dict(model, ticket.state_dict)
        attach_masks(model, ticket.masks)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"{where} does not fit this model ({first_line(exc)})") from exc
    return model


def _build(meta: dict[str, Any], where: Any) -> nn.Module:
    config = meta.get("model")
    if not isinstance(config, dict) or "name" not in config:
        raise ConfigError(f"{where} records no ltsearch model config (it was saved from a Python model): pass the "
                          f"network, ltsearch.load_ticket(path, model)")
    if config["name"] == "custom":
        raise ConfigError(f"{where} holds a model=custom network ({config.get('_target_')}); ltsearch never imports "
                          f"and calls a constructor named by a file: build the network yourself and pass it "
                          f"(ltsearch.load_ticket(path, model)), or export from the run folder")
    try:
        return build_model(model_config(config), tuple(meta["input"]["shape"]), int(meta["num_classes"]),
                           int(meta.get("seed", 0)))
    except LtsearchError:
        raise
    except Exception as exc:  # a config this version's schema does not take (keys of a newer ltsearch)
        raise ConfigError(f"{where}: its model config does not build here ({first_line(exc, 160)})") from exc


def from_file(path: str | Path, model: nn.Module | None = None) -> Exportable:
    ticket = ticketfile.read(path)
    net = network(ticket, model, Path(path))
    return Exportable(net, ticket.meta, ticket.meta.get("dataset", {}))


def save(model: nn.Module, masks: dict[str, torch.Tensor] | None, path: str | Path,
         meta: dict[str, Any] | None = None) -> int:
    """Write `model`'s weights (plain names) with `masks` (default: the masks attached to it) as a ticket file."""
    masks = masks_of(model) if masks is None else masks
    described = {"model": {"class": f"{type(model).__module__}.{type(model).__qualname__}"}, **(meta or {})}
    return write(Path(path), lambda: ticketfile.encode(plain_state_dict(model), masks, described))


# -- outputs ---------------------------------------------------------------------------------------------------
def writable_problem(path: Path) -> str | None:
    """Why `path` cannot be written (before any work is done), or None."""
    if path.is_dir():
        return f"{path} is a folder; name the file to write"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot write {path}: {parent} is not a folder"
    if not os.access(parent, os.W_OK):
        try:
            readonly = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
        except OSError:
            readonly = False
        return f"cannot write {path}: {parent} is {'on a read-only file system' if readonly else 'not writable'}"
    return None


def write(path: Path, produce: Callable[[], bytes]) -> int:
    """Check that `path` can be written, produce the bytes, write them atomically; return their size."""
    problem = writable_problem(path)
    if problem:
        raise StorageError(problem)
    data = produce()
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return len(data)
