"""ltsearch as a library: find a ticket for your own model and data, apply masks, load the ticket of a
finished run, run a configured pipeline. Re-exported by the package (`ltsearch.find_ticket`, ...).

    import ltsearch
    ticket = ltsearch.find_ticket(model, (x, y), sparsity=0.9, method="cts_kl")  # masks, scores, counts
    ltsearch.apply_masks(model, ticket.masks)                                      # w * mask in every forward
    net = ltsearch.load_ticket("outputs/runs/<run>")                              # the ticket, in a fresh model
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
from omegaconf import OmegaConf
from torch import Tensor, nn

from ltsearch.compose import compose as compose_config  # the validated config `ltsearch run` would run
from ltsearch.compose import compose_labelled
from ltsearch.config import DatasetConfig
from ltsearch.data import build_data
from ltsearch.data.inmemory import user_data
from ltsearch.errors import ArtifactError, ConfigError
from ltsearch.logfile import RunLogHandler
from ltsearch.masking import Masks, attach_masks, count, density_report, detach_masks, load_plain_state_dict
from ltsearch.models import build_model, check_shapes, model_config
from ltsearch.paths import FINAL, LOG, MASK, RETRAIN, REWIND, SEARCH, TICKET
from ltsearch.pipeline import run_pipeline
from ltsearch.pruners import PruneContext, build_pruner
from ltsearch.rundir import ArtifactDir, read_record
from ltsearch.runtime import Runtime
from ltsearch.training.loop import Callback, Record
from ltsearch.training.trainer import Trainer

__all__ = ["Ticket", "apply_masks", "compose_config", "find_ticket", "load_masks", "load_ticket", "resume", "run"]

WEIGHTS = {"ticket": (REWIND, TICKET), "trained": (RETRAIN, FINAL)}


@dataclass
class Ticket:
    """What `find_ticket` found: `masks` (weight name -> bool tensor, True = kept), the method's per-weight
    `scores` (higher = keep; CTS: the mask logits) when it has them, and its log (`info`)."""

    method: str
    sparsity: float
    masks: Masks
    scores: dict[str, Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

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
    return Ticket(method=label, sparsity=float(sparsity), masks=masks, scores=scores, info=result.info)


def apply_masks(model: nn.Module, masks: Masks | Ticket, permanent: bool = False) -> nn.Module:
    """Attach masks to `model` in place (a parametrization: the weight is w * mask in every forward, and the
    pruned entries stay 0 when the model trains) and return it. `permanent=True` leaves plain weights with
    zeros instead (for export; training would then revive them)."""
    masks = masks.masks if isinstance(masks, Ticket) else masks
    attach_masks(model, masks)
    return detach_masks(model) if permanent else model


# -- finished runs ------------------------------------------------------------------------------------------
def _artifact(run_dir: Path, stage: str, name: str) -> Any:
    folder = ArtifactDir(run_dir / stage)
    if not folder.done:
        raise ArtifactError(f"{run_dir}: stage {stage} is not complete, so it holds no {name} (ltsearch resume "
                            f"{run_dir} finishes the run)")
    return folder.load_tensors(name)


def load_masks(run_dir: str | Path) -> Masks:
    """The mask a finished search stage found (search/mask.pt): weight name -> bool tensor."""
    run_dir = Path(run_dir)
    read_record(run_dir)
    return _artifact(run_dir, SEARCH, MASK)


def _fresh_model(run_dir: Path, record: dict[str, Any], ticket: dict[str, Any]) -> nn.Module:
    """The run's network, built from its recorded config (shapes from the ticket, or from the data)."""
    config = record["config"]
    if "input_shape" in ticket:
        shape, classes = tuple(ticket["input_shape"]), int(ticket["num_classes"])
    else:  # a ticket written before the shapes were recorded with it
        dataset = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), config["dataset"]))
        data = build_data(dataset)  # type: ignore[arg-type]
        shape, classes = data.input_shape, data.num_classes
    return build_model(model_config(config["model"]), shape, classes, int(config["seed"]))


def load_ticket(run_dir: str | Path, model: nn.Module | None = None, weights: str = "ticket") -> nn.Module:
    """The ticket of a finished run in a fresh model (on the CPU, masks attached): `weights="ticket"` the
    weights it starts retraining from (the pruning point with the mask applied), `"trained"` the retrained
    weights. Into `model` when given (its parameter names must match the run's network), else into a new
    network built from the run's recorded config."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r}: choose {' or '.join(map(repr, WEIGHTS))}")
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    saved = _artifact(run_dir, *WEIGHTS[weights])
    if model is None:
        shapes = saved if weights == "ticket" else _artifact(run_dir, REWIND, TICKET)
        model = _fresh_model(run_dir, record, shapes)
    try:
        load_plain_state_dict(model, saved["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise ConfigError(f"the {weights} weights of {run_dir} do not fit this model ({str(exc).splitlines()[0]})"
                          ) from exc
    return attach_masks(model, saved["masks"])


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
