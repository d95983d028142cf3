"""`ltsearch export SOURCE`: a finished run's ticket (or a ticket file) as a compact ticket file, an ONNX model,
or a sparse TorchScript program.

SOURCE is a run folder (`--weights trained`, the default: the retrained ticket; `ticket`: the weights
retraining starts from) or a ticket file written by an earlier export or by the evaluate stage
(evaluate/ticket.safetensors); `ltsearch.tickets` reads both. Every output is written atomically after it
was checked (the ONNX model in onnxruntime against PyTorch on test samples, the sparse program against the
masked dense network), so a failed export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import torch

import ltsearch.onnx_export as onnx_export
import ltsearch.sparse as sparse
import ltsearch.ticketfile as ticketfile
from ltsearch.errors import ArtifactError, ConfigError, DataError, LtsearchError, StorageError
from ltsearch.masking import masks_of, plain_state_dict
from ltsearch.paths import EXPORT
from ltsearch.tickets import Exportable, from_file, from_run, load_data, writable_problem, write

FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "sparse": ".sparse.pt"}
SPARSE_TOLERANCE = 1e-5


# -- outputs ---------------------------------------------------------------------------------------------------
def size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""


def input_spec(meta: dict[str, Any]) -> dict[str, Any]:
    """What the network takes, from the header (a file saved from Python may not say)."""
    spec = meta.get("input")
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
        raise ConfigError("the ticket records no input shape (a file saved from Python without meta['input']): "
                          "load it into your network and use ltsearch.export_onnx(model, path, input_shape) or "
                          "ltsearch.sparsify(model, example_batch)")
    return spec


def export_ticket(item: Exportable, out: Path) -> list[str]:
    state, masks = plain_state_dict(item.model), masks_of(item.model)
    nbytes = write(out, lambda: ticketfile.encode(state, masks, item.meta))
    dense = ticketfile.dense_bytes(state)
    kept, total = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    acc = item.meta.get("test_acc")
    return [f"wrote {out}: {size(nbytes)}, {100 * nbytes / dense:.1f}% of the dense state_dict ({size(dense)}); "
            f"{kept} of {total} prunable weights kept; {item.meta.get('weights')} weights"
            + (f", test accuracy {acc:.4f}" if acc is not None else "")]


def export_onnx(item: Exportable, out: Path, samples: int, data_root: str | None) -> list[str]:
    onnx_export.require_extra()
    problem = writable_problem(out)
    if problem:
        raise StorageError(problem)
    shape = tuple(input_spec(item.meta)["shape"])
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
    spec = input_spec(meta)
    norm = (f"normalised as (x - mean) / std with mean {spec['mean']} and std {spec['std']}"
            if spec.get("mean") else "not normalised")
    return (f"input '{onnx_export.INPUT}' float32 [batch, {', '.join(map(str, spec['shape']))}], {norm}; "
            f"output '{onnx_export.OUTPUT}' [batch, {meta.get('num_classes', '?')}]")


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    return {"ltsearch.input": json.dumps(meta["input"]), "ltsearch.num_classes": str(meta.get("num_classes")),
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
    shape = tuple(input_spec(item.meta)["shape"])
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
    p.add_argument("--weights", default=None,
                   help="trained (default: the retrained ticket) or ticket (the weights retraining starts from)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="the file to write (default: RUN_DIR/export/ticket_WEIGHTS.EXT, or beside the ticket file)")
    p.add_argument("--check-samples", type=int, default=1000, metavar="N",
                   help="onnx: test samples onnxruntime is checked on (0: no check, -1: the whole test set)")
    p.add_argument("--data-root", metavar="DIR", help="onnx: where the test data is (default: the run's dataset.root)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="sparse: the batch size each layer's kernel is chosen for (default 1)")
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
    try:
        if fmt == "safetensors":
            lines = export_ticket(item, out)
        elif fmt == "onnx":
            lines = export_onnx(item, out, args.check_samples, args.data_root)
        else:
            lines = export_sparse(item, out, args.batch)
    except StorageError as exc:
        if args.out is not None:
            raise
        raise StorageError(f"{exc} (--out FILE writes it elsewhere)") from exc
    print(f"ltsearch: {lines[0]}")
    for line in lines[1:]:
        print(line)
    return 0
