"""Concrete Ticket Search (Arora & Teuscher 2025): learn mask logits over a Concrete relaxation.

The weights stay frozen at the pruning point; one logit per prunable weight is optimised with Adam through
the soft mask m = sigmoid(L / tau + theta), L fresh logistic noise per minibatch, under the GradBalance
sparsity control (`ltsearch.pruners.concrete`). The objective compares the masked network with the same
network unmasked (the "dense teacher" at the pruning point): `objective=` task, forward_kl, reverse_kl, ...
The final mask is the exact global top-k of theta; theta itself is saved as the method's scores (the
inverted-mask sanity check uses it). This module holds the options, the search schedule (length, lr drop)
and the pruner that runs the search as a resumable epoch loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from torch import nn

from ltsearch.config import When
from ltsearch.data import Data
from ltsearch.masking import batch_statistics, topk_masks
from ltsearch.objectives import build_objective
from ltsearch.paths import CTS_SEARCH
from ltsearch.pruners.base import PruneContext, Pruner, PrunerConfig, PruneResult
from ltsearch.pruners.concrete import BatchNormMode, ConcreteSearch, Control
from ltsearch.rundir import ArtifactDir
from ltsearch.training.loop import EpochLoop, Record

log = logging.getLogger(__name__)

LENGTHS = {"short": 0.125, "half": 0.5, "long": 1.0}


class Length(str, Enum):
    short = "short"
    half = "half"
    long = "long"


@dataclass
class CTSConfig(PrunerConfig):
    """Options of the search. `epochs` > 0 overrides `length` (a fraction of train.epochs, truncated:
    short 1/8, half 1/2, long 1). `lr_drop_epoch`: the 0-based search epoch from which the mask lr is
    multiplied by `lr_drop_factor`; -1 = the CTS authors' epoch int(0.88 E) - 1 of a search of E epochs
    (E = 20: epochs 16-19 run at lr/10), 0 = never."""

    when: When = When.rewind
    length: Length = Length.short
    epochs: int = 0
    lr: float = 0.1
    temperature: float = 2.0 / 3.0
    control: Control = Control.gradbalance
    slack: float = 1.1
    lambda_ema: float = 0.99
    lr_drop_epoch: int = -1
    lr_drop_factor: float = 0.1
    batch_size: int = 0
    # BatchNorm in the search: batch statistics (the authors') or the pruning point's running statistics
    batchnorm: BatchNormMode = BatchNormMode.batch
    # bf16 autocast for the search's forward passes on CUDA: opt-in until scripts/check_cts_bf16.py has
    # shown on a GPU that it selects the same mask as fp32 up to seed noise.
    autocast: bool = False
    # compute the teacher's logits once per search when that gives the same logits (see the module doc)
    cache_teacher: bool = True
    # GradBalance's lambda* in a run over several processes (ltsearch.pruners.concrete): `authors` averages
    # the ranks' targets as the authors' code does (depends on the number of processes), `global` takes it
    # from the averaged gradient (equal to one process on the same global batches)
    ddp_lambda: str = "authors"

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"pruner.epochs must be >= 0 (0 = use pruner.length), got {self.epochs}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError("pruner.lr and pruner.temperature must be > 0")
        if self.slack < 1:
            raise ValueError(f"pruner.slack must be >= 1 (1.1 = 10% over the target count), got {self.slack}")
        if not 0 <= self.lambda_ema < 1:
            raise ValueError("pruner.lambda_ema must be in [0, 1)")
        if self.lr_drop_epoch < -1 or not 0 < self.lr_drop_factor <= 1:
            raise ValueError("pruner.lr_drop_epoch must be >= -1 and pruner.lr_drop_factor in (0, 1]")
        if self.batch_size < 0:
            raise ValueError("pruner.batch_size must be >= 0 (0 = train.batch_size)")
        if self.ddp_lambda not in ("authors", "global"):
            raise ValueError(f"pruner.ddp_lambda must be authors or global, got '{self.ddp_lambda}'")


# -- the search --------------------------------------------------------------------------------------------
def search_epochs(cfg: CTSConfig, train_epochs: int) -> int:
    """`pruner.epochs`, else int(ratio x train.epochs) as the CTS authors truncate it (at least one epoch:
    a schedule too short for even one, e.g. short of 7 epochs, searches for one)."""
    if cfg.epochs > 0:
        return cfg.epochs
    return max(1, int(LENGTHS[Length(cfg.length).value] * train_epochs))


def drop_epoch(cfg: CTSConfig, epochs: int) -> int | None:
    """The 0-based epoch from which the mask lr is multiplied by lr_drop_factor (once), or None.

    Automatic: the CTS authors drop the lr once the epoch counter reaches int(0.88 E) - 1 completed
    epochs, so epochs int(0.88 E) - 1 .. E - 1 run at the lower lr (E = 20: 16-19, E = 80: 69-79,
    E = 160: 139-159); a search of fewer than 3 epochs never drops."""
    if cfg.lr_drop_epoch == 0:
        return None
    if cfg.lr_drop_epoch > 0:
        return cfg.lr_drop_epoch if cfg.lr_drop_epoch < epochs else None
    first_low = int(0.88 * epochs) - 1
    return first_low if first_low >= 1 else None


def build_search(ctx: PruneContext, cfg: CTSConfig) -> ConcreteSearch:
    """A search over the prunable weights of the pruning-point network (weights frozen)."""
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    weights = {n: m.weight.detach() for n, m in ctx.prunable().items()}
    autocast = ctx.runtime.autocast if cfg.autocast else contextlib.nullcontext
    return ConcreteSearch(ctx.model, weights, ctx.density, cfg, build_objective(ctx.cfg.objective),
                          ctx.cfg.objective.name, autocast)


class SearchEpochs:
    """The search as a task of the shared epoch loop: the lr drop, one epoch, its compute and its log line."""

    def __init__(self, search: ConcreteSearch, data: Data, batch_size: int, seed: int, epochs: int,
                 work: ArtifactDir) -> None:
        self.search = search
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.drop = drop_epoch(search.cfg, epochs)
        self.work = work

    def run_epoch(self, epoch: int, advance: Callable[[], None]) -> Record:
        if epoch == self.drop:  # once: a state resumed from a later epoch already has the lower lr
            self.search.drop_lr(self.search.cfg.lr_drop_factor)
        record = self.search.run_epoch(self.data, self.batch_size, self.seed, epoch, advance)
        # a masked forward + backward per sample, and the teacher's forwards (KL objectives)
        self.work.count("train", record["samples"])
        if record["teacher_samples"]:
            self.work.count("forward", record["teacher_samples"])
        for kind, samples in record["extra_samples"].items():  # e.g. the unmasked pass of feature matching
            self.work.count(kind, samples)
        return record

    def state_dict(self) -> dict[str, Any]:
        return self.search.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.search.load_state_dict(state)

    def summary(self, record: Record) -> str:
        return f"R {record['objective']:.4f} E[d] {record['expected_density']:.5f}"

    def log_epoch(self, r: Record, end_epoch: int) -> None:
        log.info("cts epoch %d/%d  %s %.4f  expected density %.5f (target %.5f)  theta>0 %.5f  lambda %.4g  "
                 "(%.1fs)", r["epoch"], end_epoch, self.search.objective_name, r["objective"],
                 r["expected_density"], r["target_density"], r["density_theta_positive"], r["lambda"], r["time"])


@contextlib.contextmanager
def statistics(model: nn.Module, mode: BatchNormMode) -> Iterator[None]:
    """The network as the search runs it: BatchNorm on batch statistics (the saved running statistics
    restored afterwards), or in evaluation mode on its running statistics (its mode restored afterwards)."""
    if mode == BatchNormMode.batch:
        with batch_statistics(model):
            yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class CTSPruner(Pruner):
    Config = CTSConfig

    def prune(self, ctx: PruneContext) -> PruneResult:
        cfg: CTSConfig = self.cfg  # type: ignore[assignment]
        search = build_search(ctx, cfg)
        epochs = search_epochs(cfg, ctx.cfg.train.epochs)
        batch = cfg.batch_size or ctx.cfg.train.batch_size
        work = ctx.out.child(CTS_SEARCH).start()
        log.info("cts: %d search epochs, objective %s, control %s, %d logits, target density %.5f", epochs,
                 search.objective_name, Control(cfg.control).value, search.layout.total, ctx.density)
        loop = EpochLoop(work, start_epoch=0, end_epoch=epochs,
                         steps_per_epoch=math.ceil(ctx.data.train_size / batch), description="cts search",
                         progress=ctx.runtime.progress, keep_checkpoints=ctx.runtime.keep_checkpoints,
                         callbacks=ctx.callbacks)
        with statistics(ctx.model, BatchNormMode(cfg.batchnorm)):
            reason = search.teacher_cache_reason(ctx.data)  # depends on the mode BatchNorm runs in
            log.info("cts: %s", "teacher logits computed once and reused every epoch" if reason is None
                     else f"no teacher cache: {reason}")
            history = loop.run(SearchEpochs(search, ctx.data, batch, ctx.seed, epochs, work))
        work.mark_done(epochs=epochs)
        scores = search.scores()
        info = {"epochs": epochs, "objective": search.objective_name, "control": Control(cfg.control).value,
                "final": history[-1] if history else None, "history": history}
        return PruneResult(masks=topk_masks(scores, ctx.keep), scores=scores, info=info)
