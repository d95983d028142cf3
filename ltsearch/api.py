"""ltsearch as a library: find a ticket for your own model and data, apply masks, load the ticket of a
finished run or a ticket file, save one, deploy it (sparse kernels, ONNX), run a configured pipeline.
Re-exported by the package (`ltsearch.find_ticket`, ...).

    import ltsearch
    ticket = ltsearch.find_ticket(model, (x, y), sparsity=0.9, method="cts_kl")  # masks, scores, counts
    ltsearch.apply_masks(model, ticket.masks)                                      # w * mask in every forward
    net = ltsearch.load_ticket("outputs/runs/<run>")                              # the ticket, in a fresh model
    net = ltsearch.load_ticket("outputs/runs/<run>/evaluate/ticket.safetensors")  # the same from its file
    fast = ltsearch.sparsify(net, example_batch)                                   # sparse kernels where faster
    results = ltsearch.run("pruner=magnitude", "sparsity=0.9", run_dir="outputs/runs/mine")

`find_ticket` runs a pruner directly on a `PruneContext` (no run folder, no `RunContext`): every method of
`ltsearch run` (`pruner=` option), with the same config keys as overrides. The mask is found at the weights
the model holds when it is passed (its pruning point: initial weights, or trained to a rewind point);
the model itself is not changed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import ltsearch.onnx_export as onnx_export
import ltsearch.ticketfile as ticketfile
import ltsearch.tickets as tickets
from ltsearch.compose import compose as compose_config  # the validated config `ltsearch run` would run
from ltsearch.compose import compose_labelled
from ltsearch.data.inmemory import user_data
from ltsearch.errors import ConfigError
from ltsearch.logfile import RunLogHandler
from ltsearch.masking import Masks, attach_masks, count, density_report, detach_masks, plain_state_dict
from ltsearch.models import check_shapes
from ltsearch.paths import LOG, MASK, SEARCH
from ltsearch.pipeline import run_pipeline
from ltsearch.pruners import PruneContext, build_pruner
from ltsearch.rundir import ArtifactDir, read_record
from ltsearch.runtime import Runtime
from ltsearch.sparse import sparsify
from ltsearch.ticketfile import TicketFile
from ltsearch.training.loop import Callback, Record
from ltsearch.training.trainer import Trainer

__all__ = ["Ticket", "TicketFile", "apply_masks", "compose_config", "export_onnx", "find_ticket", "load_masks",
           "load_ticket", "read_ticket_file", "resume", "run", "save_ticket", "sparsify"]


@dataclass
class Ticket:
    """What `find_ticket` found: `masks` (weight name -> bool tensor, True = kept), the method's per-weight
    `scores` (higher = keep; CTS: the mask logits) when it has them, and its log (`info`)."""

    method: str
    sparsity: float
    masks: Masks
    scores: dict[str, Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Tensor] | None = None  # the model's weights where the mask was found (plain names)
    model_class: str = ""  # the model's class, for the header of a ticket file

    @property
    def kept(self) -> int:
        return count(self.masks)[0]

    @property
    def total(self) -> int:
        return count(self.masks)[1]

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 1.0

    def layers(self) -> dict[str, dict[str, Any]]:
        """Per layer: shape, kept, total, density."""
        return density_report(self.masks)["layers"]

    def apply(self, model: nn.Module, permanent: bool = False) -> nn.Module:
        return apply_masks(model, self.masks, permanent=permanent)

    def save(self, path: str | Path, model: nn.Module | None = None, meta: dict[str, Any] | None = None) -> int:
        """Write the ticket as a ticket file (`save_ticket`): the masks with `model`'s weights when given (say,
        after you trained it with the masks), else with the weights the mask was found at. Returns its size."""
        if model is None:
            if self.weights is None:
                raise ConfigError("this Ticket holds no weights; pass the model: ticket.save(path, model)")
            weights = self.weights
            described = {"model": {"class": self.model_class}, "weights": "ticket", "method": self.method,
                         "sparsity": self.sparsity, **(meta or {})}
            return tickets.write(Path(path), lambda: ticketfile.encode(weights, self.masks, described))
        return save_ticket(model, self.masks, path, {"method": self.method, "sparsity": self.sparsity,
                                                     **(meta or {})})


# -- finding a ticket -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _work_dir(path: str | Path | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="ltsearch-") as tmp:
        yield Path(tmp)


def find_ticket(model: nn.Module, train_data: Any, sparsity: float = 0.9, method: str = "cts_kl", *,
                test_data: Any = None, num_classes: int = 0, overrides: Sequence[str] = (),
                exclude: Sequence[str] = (), seed: int = 0, device: str = "auto",
                work_dir: str | Path | None = None, callbacks: Sequence[Callback] = ()) -> Ticket:
    """Find a mask that keeps the fraction 1 - `sparsity` of `model`'s conv and linear weights.

    `train_data` (and `test_data`, used by the methods that train weights, IMP/LTR, for their per-epoch
    accuracy; default: the training data): a pair of tensors (inputs, integer labels), a torch Dataset of
    such pairs or a DataLoader; held in memory. `method`: any `pruner=` option of `ltsearch run` (cts_kl,
    cts, ltr, imp, snip, grasp, synflow, magnitude, random, dense). `overrides`: config keys as on the
    command line (`pruner.epochs=4`, `objective=forward_kl`, `train.batch_size=256`; `train.*` is the
    schedule of the methods that train). `exclude`: glob patterns of weight names never pruned (e.g.
    "fc.weight"). `work_dir`: where a method keeps its resumable state (the CTS search, IMP levels); a
    temporary folder by default. `callbacks` see every epoch of the loops the method runs.
    """
    cfg, label = compose_labelled(f"pruner={method}", f"sparsity={sparsity}", f"seed={seed}",
                                  f"runtime.device={device}", *overrides)
    cfg.model.exclude = list(exclude)
    runtime = Runtime.from_config(cfg.runtime)
    data = user_data(train_data, test_data, num_classes)
    data = data.to(runtime.data_device(data.nbytes))
    net = runtime.place(copy.deepcopy(model))
    check_shapes(net, type(model).__name__, data.input_shape, data.num_classes, runtime.device)
    pruner = build_pruner(cfg.pruner)

    def train(model: nn.Module, stream: str, out: ArtifactDir, start_epoch: int,
              end_epoch: int | None = None) -> list[Record]:
        return Trainer(model=model, data=data, cfg=cfg.train, runtime=runtime, out=out, seed=seed, stream=stream,
                       start_epoch=start_epoch, end_epoch=end_epoch, callbacks=callbacks).fit()

    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with _work_dir(work_dir) as folder, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # library code that draws from the global generator (dropout) is seeded too
        ctx = PruneContext(model=net, data=data, cfg=cfg, runtime=runtime, out=ArtifactDir(folder).start(),
                           seed=seed, density=1.0 if pruner.ignores_sparsity else cfg.density, train=train,
                           callbacks=tuple(callbacks))
        result = pruner.prune(ctx)
    masks = {name: m.bool().cpu() for name, m in result.masks.items()}
    scores = None if result.scores is None else {n: s.detach().float().cpu() for n, s in result.scores.items()}
    return Ticket(method=label, sparsity=float(sparsity), masks=masks, scores=scores, info=result.info,
                  weights=plain_state_dict(model), model_class=f"{type(model).__module__}.{type(model).__qualname__}")


def apply_masks(model: nn.Module, masks: Masks | Ticket, permanent: bool = False) -> nn.Module:
    """Attach masks to `model` in place (a parametrization: the weight is w * mask in every forward, and the
    pruned entries stay 0 when the model trains) and return it. `permanent=True` leaves plain weights with
    zeros instead (for export; training would then revive them)."""
    masks = masks.masks if isinstance(masks, Ticket) else masks
    attach_masks(model, masks)
    return detach_masks(model) if permanent else model


# -- finished runs and ticket files ---------------------------------------------------------------------------
def load_masks(run_dir: str | Path) -> Masks:
    """The mask a finished search stage found (search/mask.pt): weight name -> bool tensor."""
    run_dir = Path(run_dir)
    read_record(run_dir)
    return tickets.stage_artifact(run_dir, SEARCH, MASK)


def load_ticket(source: str | Path, model: nn.Module | None = None, weights: str | None = None) -> nn.Module:
    """A ticket in a network, masks attached, on the CPU.

    `source` is a run folder or a ticket file (`.safetensors`: `ltsearch export`, `save_ticket`, or a run's
    evaluate/ticket.safetensors). From a run folder, `weights="ticket"` (the default) gives the weights it
    starts retraining from (the pruning point with the mask applied), `"trained"` the retrained weights; a
    ticket file holds one of them (its header says which; `weights`, when given, must match). Into `model`
    when given (its parameter names and shapes must match), else into a new network built from the run's
    recorded config or the file's header (a `model=custom` file needs `model`: ltsearch never calls a
    constructor a file names)."""
    source = Path(source)
    if source.is_file() or source.suffix == ticketfile.SUFFIX:
        ticket = ticketfile.read(source)
        if weights is not None and weights != ticket.meta.get("weights"):
            raise ConfigError(f"{source} holds the {ticket.meta.get('weights')} weights, not weights={weights!r}")
        return tickets.network(ticket, model, source)
    return tickets.run_ticket(source, weights or "ticket", model)


def read_ticket_file(path: str | Path) -> TicketFile:
    """A ticket file's tensors and header without building a network: `state_dict` (plain names, zeros where
    pruned), `masks`, `meta` (model config, input, dataset, method, density, accuracy, version), `nbytes`."""
    return ticketfile.read(path)


def save_ticket(model: nn.Module, masks: Masks | None, path: str | Path, meta: dict[str, Any] | None = None) -> int:
    """Write `model`'s weights with `masks` (None: the masks attached to it) as a ticket file at `path`,
    atomically; `meta` (JSON) goes into its header. Returns the file's size in bytes."""
    return tickets.save(model, masks, path, meta)


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...],
                metadata: dict[str, str] | None = None) -> int:
    """Write `model` (masks multiplied in, eval mode) as an ONNX model for inputs [batch, *input_shape]
    (opset `ltsearch.onnx_export.OPSET`; needs `pip install 'ltsearch[export]'`). Returns the file's size."""
    onnx_export.require_extra("export_onnx")
    return tickets.write(Path(path), lambda: onnx_export.to_onnx(model, tuple(input_shape), metadata))


# -- whole pipelines ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _run_log(run_dir: Path) -> Iterator[None]:
    """run.log in the run folder, as `ltsearch run` writes it (every record of the package's loggers)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("ltsearch")
    handler = RunLogHandler(run_dir / LOG)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def run(*overrides: str, run_dir: str | Path | None = None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run the pipeline `ltsearch run OVERRIDES...` would run, in `run_dir` (default:
    outputs/runs/<time>_<method>_<sparsity>, as the command names it), and return its results (the content of
    evaluate/results.json; empty when the evaluate stage is not selected). Re-entering a run folder resumes
    it, as `ltsearch resume` does."""
    cfg, label = compose_labelled(*overrides)
    if run_dir is None:
        run_dir = Path("outputs/runs") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{label}_{cfg.sparsity}"
    run_dir = Path(run_dir)
    with _run_log(run_dir):
        return run_pipeline(cfg, run_dir, overrides=list(overrides), label=label, callbacks=callbacks)


def resume(run_dir: str | Path, *overrides: str, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Continue a run where it stopped, with the overrides it was created with (plus runtime-only ones)."""
    record = read_record(Path(run_dir))
    return run(*record["overrides"], *overrides, run_dir=run_dir, callbacks=callbacks)
