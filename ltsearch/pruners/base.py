"""The pruner interface: one class and one config dataclass per method, in one file.

A pruner receives the dense network at the pruning point (`PruneContext.model`) and returns masks that
keep exactly `ctx.keep` prunable weights. Methods that train (IMP/LTR) or iterate (CTS, SynFlow) keep
their resumable state under `ctx.out`. Nothing else in the pipeline needs to know which method ran.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from ltsearch.cache import ArtifactCache
from ltsearch.config import Config, When
from ltsearch.data import Data
from ltsearch.masking import Masks, keep_count, prunable_modules, topk_masks
from ltsearch.rundir import ArtifactDir
from ltsearch.runtime import Runtime
from ltsearch.seeding import generator
from ltsearch.training.loop import Callback, Record


@dataclass
class PrunerConfig:
    """Options every pruner has. `label` names the method in reports (defaults to the config option)."""

    name: str = MISSING
    label: str = ""
    when: When = When.init


class TrainFn(Protocol):
    """Trains `model` in place over epochs [start_epoch, end_epoch) of the run's schedule, resumable under
    `out`, with the data order of `stream`; returns the per-epoch records."""

    def __call__(self, model: nn.Module, stream: str, out: ArtifactDir, start_epoch: int,
                 end_epoch: int | None = None) -> list[Record]: ...


@dataclass
class PruneContext:
    """Everything a pruner may use. `model` is dense, at the pruning point, on the device; a pruner may
    change it (the pipeline reloads the pruning point from disk afterwards)."""

    model: nn.Module
    data: Data
    cfg: Config
    runtime: Runtime
    out: ArtifactDir
    seed: int
    density: float
    train: TrainFn | None = None  # needed by the methods that train weights (IMP/LTR)
    cache: ArtifactCache | None = None  # a folder that is a pure function of a spec can be shared
    upstream: dict[str, Any] = field(default_factory=dict)  # the upstream spec (model, data, schedule, seed)
    callbacks: Sequence[Callback] = ()  # hooks for the epoch loops a pruner runs (loggers)

    @property
    def exclude(self) -> list[str]:
        return list(self.cfg.model.exclude)

    def prunable(self) -> dict[str, nn.Module]:
        return prunable_modules(self.model, self.exclude)

    @property
    def total(self) -> int:
        return sum(m.weight.numel() for m in self.prunable().values())

    @property
    def keep(self) -> int:
        """k = floor(density * N): the exact number of weights the final mask keeps."""
        return keep_count(self.density, self.total)


@dataclass
class PruneResult:
    masks: Masks
    scores: dict[str, Tensor] | None = None  # higher = more important (used by the invert sanity check)
    info: dict[str, Any] = field(default_factory=dict)  # method-specific numbers for the record


class Pruner(ABC):
    """Subclass, set `Config`, implement `prune`; register the class in `ltsearch.pruners.PRUNERS`."""

    Config: ClassVar[type[PrunerConfig]] = PrunerConfig
    # A pruner that keeps everything regardless of `sparsity` (the dense baseline) says so here.
    ignores_sparsity: ClassVar[bool] = False

    def __init__(self, cfg: PrunerConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def prune(self, ctx: PruneContext) -> PruneResult: ...


class ScorePruner(Pruner):
    """Single-shot pruning: score every prunable weight, keep the global top-k."""

    @abstractmethod
    def scores(self, ctx: PruneContext) -> dict[str, Tensor]: ...

    def prune(self, ctx: PruneContext) -> PruneResult:
        scores = {name: s.detach().float().cpu() for name, s in self.scores(ctx).items()}
        return PruneResult(topk_masks(scores, ctx.keep), scores)


def weights_at(ctx: PruneContext) -> dict[str, Tensor]:
    """The prunable weights of the pruning-point model, detached."""
    return {name: m.weight.detach() for name, m in ctx.prunable().items()}


def uniform_scores(ctx: PruneContext, *keys: object) -> dict[str, Tensor]:
    gen = generator(ctx.seed, *keys)
    return {name: torch.rand(w.shape, generator=gen) for name, w in weights_at(ctx).items()}
