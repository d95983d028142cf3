"""`ltsearch export SOURCE`: a finished run's ticket (or a ticket file) as a compact ticket file, an ONNX model,
or a sparse TorchScript program; and the readers behind `ltsearch.load_ticket` and `ltsearch.save_ticket`.

SOURCE is a run folder (the ticket's weights: `ticket`, where retraining starts, from rewind/ticket.pt;
`trained`, the retrained ticket, from retrain/final.pt) or a ticket file written by an earlier export or by
the evaluate stage (evaluate/ticket.safetensors). A network is rebuilt from the run's recorded model config;
for a ticket file, from the model config in its header, except a `model=custom` network: a file may come
from anyone, and ltsearch never imports and calls a constructor a file names (pass the network instead).

Every output is written atomically after it was checked (the ONNX model in onnxruntime against PyTorch on test
samples, the sparse program against the masked dense network), so a failed export leaves nothing behind.

Why this module is long: it is the one path from a source (run folder or file) to a checked output file,
with the command's argument checks; its pieces are short functions.
"""

from __future__ import annotations

import argparse
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

import ltsearch.onnx_export as onnx_export
import ltsearch.sparse as sparse
import ltsearch.ticketfile as ticketfile
from ltsearch.config import DatasetConfig
from ltsearch.errors import ArtifactError, ConfigError, DataError, LtsearchError, StorageError, first_line
from ltsearch.masking import attach_masks, load_plain_state_dict, masks_of, plain_state_dict
from ltsearch.models import build_model, model_config
from ltsearch.paths import EVALUATE, EXPORT, FINAL, RESULTS, RETRAIN, REWIND, TICKET, TICKET_FILE
from ltsearch.rundir import ArtifactDir, read_record
from ltsearch.storage import atomic_write

FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "sparse": ".sparse.pt"}
WEIGHTS = {"ticket": (REWIND, TICKET), "trained": (RETRAIN, FINAL)}
SPARSE_TOLERANCE = 1e-5


# -- sources ---------------------------------------------------------------------------------------------------
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


def from_run(run_dir: str | Path, weights: str = "trained", model: nn.Module | None = None) -> Exportable:
    """The `weights` of a finished run in its network (or in `model`), masks attached, with its header."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r}: choose {' or '.join(map(repr, WEIGHTS))}")
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    saved = stage_artifact(run_dir, *WEIGHTS[weights])
    shapes = saved if weights == "ticket" else stage_artifact(run_dir, REWIND, TICKET)
    net = model if model is not None else run_network(run_dir, record, shapes)
    try:
        load_plain_state_dict(net, saved["state_dict"])
        attach_masks(net, saved["masks"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"the {weights} weights of {run_dir} do not fit this model ({first_line(exc)})") from exc
    config = record["config"]
    input_meta = _recorded_input(run_dir) or _input_of_data(config["dataset"])
    meta = ticketfile.run_meta(config, weights=weights, label=record.get("label") or config["pruner"]["name"],
                               input_shape=tuple(shapes["input_shape"]) if "input_shape" in shapes else
                               tuple(input_meta["shape"]), num_classes=int(shapes.get("num_classes", 0)) or
                               int(input_meta["num_classes"]), mean=input_meta["mean"], std=input_meta["std"],
                               test_acc=_tested_accuracy(run_dir, weights))
    return Exportable(net, meta, config["dataset"])


def _recorded_input(run_dir: Path) -> dict[str, Any] | None:
    """The input description of the ticket file the evaluate stage wrote (same run, same data), if any."""
    path = run_dir / EVALUATE / TICKET_FILE
    if not (ArtifactDir(run_dir / EVALUATE).done and path.is_file()):
        return None
    meta = ticketfile.read(path).meta
    return {**meta["input"], "num_classes": meta["num_classes"]}


def _input_of_data(dataset: dict[str, Any]) -> dict[str, Any]:
    data = load_data(dataset)
    return {"shape": list(data.input_shape), "num_classes": data.num_classes, "mean": _floats(data.mean),
            "std": _floats(data.std)}


def _floats(values: torch.Tensor | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values.flatten()]


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
            os.statvfs(parent)
            readonly = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
        except OSError:
            readonly = False
        return f"cannot write {path}: {parent} is {'on a read-only file system' if readonly else 'not writable'}"
    return None


def write(path: Path, produce: Any) -> int:
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


def size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""


def export_ticket(item: Exportable, out: Path) -> list[str]:
    nbytes = write(out, lambda: ticketfile.encode(plain_state_dict(item.model), masks_of(item.model), item.meta))
    dense = ticketfile.dense_bytes(plain_state_dict(item.model))
    kept, total = (sum(int(m.sum()) for m in masks_of(item.model).values()),
                   sum(m.numel() for m in masks_of(item.model).values()))
    acc = item.meta.get("test_acc")
    return [f"wrote {out}: {size(nbytes)}, {100 * nbytes / dense:.1f}% of the dense state_dict ({size(dense)}); "
            f"{kept} of {total} prunable weights kept; {item.meta.get('weights')} weights"
            + (f", test accuracy {acc:.4f}" if acc is not None else "")]


def export_onnx(item: Exportable, out: Path, samples: int, data_root: str | None) -> list[str]:
    onnx_export.require_extra()
    problem = writable_problem(out)
    if problem:
        raise StorageError(problem)
    shape = tuple(item.meta["input"]["shape"])
    data = onnx_export.to_onnx(item.model, shape, onnx_metadata(item.meta))
    lines = [f"ONNX opset {onnx_export.OPSET}: {input_line(item.meta)}"]
    if samples:
        result = onnx_export.check(data, item.model, test_batches(item, samples, data_root))
        if not result.passed:
            raise ArtifactError(f"the ONNX model does not compute what PyTorch computes: {result.line()}; "
                                f"nothing was written")
        lines.append(result.line())
    else:
        lines.append("not checked against PyTorch (--check-samples 0)")
    write(out, lambda: data)
    return [f"wrote {out}: {size(len(data))}", *lines]


def input_line(meta: dict[str, Any]) -> str:
    spec = meta["input"]
    norm = (f"normalised as (x - mean) / std with mean {spec['mean']} and std {spec['std']}"
            if spec.get("mean") else "not normalised")
    return (f"input '{onnx_export.INPUT}' float32 [batch, {', '.join(map(str, spec['shape']))}], {norm}; "
            f"output '{onnx_export.OUTPUT}' [batch, {meta['num_classes']}]")


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    import json

    return {"ltsearch.input": json.dumps(meta["input"]), "ltsearch.num_classes": str(meta["num_classes"]),
            "ltsearch.model": json.dumps(meta.get("model")), "ltsearch.weights": str(meta.get("weights")),
            "ltsearch.method": str(meta.get("method")), "ltsearch.sparsity": str(meta.get("sparsity")),
            "ltsearch.version": str(meta.get("ltsearch_version")),
            "ltsearch.config_sha256": str(meta.get("config_sha256"))}


def test_batches(item: Exportable, samples: int, root: str | None, batch: int = 500) -> Any:
    """The first `samples` test samples (negative: all) of the dataset the ticket was tested on."""
    if not item.dataset:
        raise DataError("the ticket records no dataset to check against: --check-samples 0 skips the check")
    try:
        data = load_data(item.dataset, root)
    except LtsearchError as exc:
        raise DataError(f"{exc} (--data-root DIR names where the test data is; --check-samples 0 skips the "
                        f"check)") from exc
    return data.eval_batches("test", batch, torch.device("cpu"), limit=max(samples, 0))


def export_sparse(item: Exportable, out: Path, batch: int) -> list[str]:
    problem = writable_problem(out)
    if problem:
        raise StorageError(problem)
    shape = tuple(item.meta["input"]["shape"])
    example = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    fast = sparse.sparsify(item.model, example)
    program = sparse.traced(fast, example)
    with torch.no_grad():
        worst = float((program(example) - item.model.eval()(example)).abs().max())
    if not worst <= SPARSE_TOLERANCE:
        raise ArtifactError(f"the sparse program's outputs differ from the masked dense network's by {worst:.2g} "
                            f"(more than {SPARSE_TOLERANCE:g}); nothing was written")
    buffer = io.BytesIO()
    with sparse.quiet():
        torch.jit.save(program, buffer)
    nbytes = write(out, buffer.getvalue)
    chosen = [c for c in fast.sparse_plan if c.kernel != "dense"]
    return [f"wrote {out}: TorchScript, {size(nbytes)}; {len(chosen)} of {len(fast.sparse_plan)} layers sparse "
            f"(each timed at batch {batch} on this machine); outputs within {worst:.2g} of the masked dense network; "
            f"load with torch.jit.load", *[f"  {line}" for line in sparse.plan_lines(fast.sparse_plan)]]


# -- the command -------------------------------------------------------------------------------------------------
def default_out(source: Path, from_file: bool, fmt: str, weights: str) -> Path:
    if from_file:
        return source.with_name(source.name.removesuffix(ticketfile.SUFFIX) + FORMATS[fmt])
    return source / EXPORT / f"ticket_{weights}{FORMATS[fmt]}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltsearch export", description="A finished run's ticket, or a ticket file, as "
                                "a compact ticket file (safetensors), an ONNX model or a sparse TorchScript program.")
    p.add_argument("source", type=Path, help="a run folder, or a ticket file (.safetensors) for onnx and sparse")
    p.add_argument("--format", default="safetensors", help="safetensors (default), onnx or sparse")
    p.add_argument("--weights", default=None, help="trained (default: the retrained ticket) or ticket (the "
                                                   "weights retraining starts from)")
    p.add_argument("--out", type=Path, help="the file to write (default: RUN_DIR/export/ticket_WEIGHTS.EXT, or "
                                            "beside the ticket file)")
    p.add_argument("--check-samples", type=int, default=1000, help="onnx: test samples onnxruntime is checked on "
                                                                   "(0: no check, -1: the whole test set)")
    p.add_argument("--data-root", help="onnx: where the test data is (default: the run's dataset.root)")
    p.add_argument("--batch", type=int, default=1, help="sparse: the batch size each layer's kernel is chosen for")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    fmt = args.format
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    if fmt == "onnx":
        onnx_export.require_extra()
    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    source = args.source
    is_file = source.is_file()
    if not source.exists():
        raise ArtifactError(f"{source} does not exist")
    if is_file:
        if fmt == "safetensors":
            raise ConfigError(f"{source} is a ticket file already; export it --format onnx or --format sparse")
        item = from_file(source)
        if args.weights not in (None, item.meta.get("weights")):
            raise ConfigError(f"{source} holds the {item.meta.get('weights')} weights, not --weights {args.weights}")
    else:
        item = from_run(source, args.weights or "trained")
    out = args.out or default_out(source, is_file, fmt, item.meta.get("weights") or "ticket")
    if fmt == "safetensors":
        lines = export_ticket(item, out)
    elif fmt == "onnx":
        lines = export_onnx(item, out, args.check_samples, args.data_root)
    else:
        lines = export_sparse(item, out, args.batch)
    print(f"ltsearch: {lines[0]}")
    for line in lines[1:]:
        print(line)
    return 0
