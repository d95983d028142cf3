"""Concrete Ticket Search (Arora & Teuscher 2025): learn mask logits over a Concrete relaxation.

The weights stay frozen at the pruning point; only one global vector of logits `theta` (one per prunable
weight) is optimised with Adam. Every minibatch draws fresh logistic noise L and uses the soft mask
m = sigmoid(L / tau + theta) in the forward pass (`torch.func.functional_call` with w * m, so the model
itself is never modified). The objective compares the masked network with the same network unmasked
(the "dense teacher" at the pruning point): task loss, forward KL or reverse KL (`objective=`).

Sparsity is controlled by GradBalance: with s_err = 100 (sum sigmoid(theta) / (slack d N) - 1), the
gradient of s_err is added to the task gradient with a weight lambda that balances the two norms,
lambda* = ||g_task|| / ||g_sp|| while s_err > 0 (else 0), smoothed by an EMA of 0.99. It has no tunable
coefficient: rescaling the objective rescales lambda* identically. The `lagrange` control is the
paper's ablation (a multiplier updated by gradient ascent, no slack). The final mask is the exact global
top-k of theta; theta itself is saved as the method's scores (the inverted-mask sanity check uses it).

The KL objectives need the teacher's logits for every batch. When the network is a per-sample function
(no BatchNorm, no active dropout) they are computed once per search and looked up afterwards
(`pruner.cache_teacher`): the weights are frozen and the search never augments, so each sample's teacher
logits are the same in every epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ltsearch.config import When
from ltsearch.data import Data
from ltsearch.masking import batch_statistics, topk_masks
from ltsearch.objectives import Objective, build_objective
from ltsearch.paths import CTS_SEARCH
from ltsearch.pruners.base import PruneContext, Pruner, PrunerConfig, PruneResult
from ltsearch.rundir import ArtifactDir
from ltsearch.seeding import generator
from ltsearch.training.evaluate import predict
from ltsearch.training.loop import EpochLoop, Record

log = logging.getLogger(__name__)

LENGTHS = {"short": 0.125, "half": 0.5, "long": 1.0}
NOISE_CLAMP = 1e-10
TEACHER_CACHE_LIMIT = 1 << 30  # bytes of cached teacher logits beyond which the teacher runs every step


class Control(str, Enum):
    gradbalance = "gradbalance"
    lagrange = "lagrange"


class Length(str, Enum):
    short = "short"
    half = "half"
    long = "long"


@dataclass
class CTSConfig(PrunerConfig):
    """Options of the search. `epochs` > 0 overrides `length` (a fraction of train.epochs:
    short 1/8, half 1/2, long 1). `lr_drop_epoch` -1 = automatic (x0.1 at 7/8 of searches of at least
    8 epochs), 0 = never."""

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
    # bf16 autocast for the search's forward passes on CUDA: opt-in until scripts/check_cts_bf16.py has
    # shown on a GPU that it selects the same mask as fp32 up to seed noise.
    autocast: bool = False
    # compute the teacher's logits once per search when that gives the same logits (see the module doc)
    cache_teacher: bool = True

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


# -- the formulas ------------------------------------------------------------------------------------------
def logistic_noise(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """L = log u - log(1 - u), u ~ U(0, 1) clamped to [1e-10, 1 - 1e-10].

    `torch.logit(u, eps)` is exactly this formula (it clamps u to [eps, 1 - eps] first) in one pass, an
    order of magnitude faster on the CPU than log(u) - log1p(-u), which dominated a LeNet search step."""
    return torch.logit(torch.rand(n, generator=gen, device=device), eps=NOISE_CLAMP)


def soft_mask(theta: Tensor, noise: Tensor, temperature: float) -> Tensor:
    """The Concrete relaxation m = sigmoid(L / tau + theta) (no stretch, no straight-through)."""
    return torch.sigmoid(torch.add(theta, noise, alpha=1.0 / temperature))


def sparsity_error(theta: Tensor, density: float, slack: float) -> tuple[Tensor, Tensor]:
    """s_err = 100 (sum sigmoid(theta) / (slack d N) - 1) and its analytic gradient w.r.t. theta."""
    p = torch.sigmoid(theta)
    scale = 100.0 / (slack * density * theta.numel())
    return scale * p.sum() - 100.0, scale * p * (1 - p)


def gradbalance_lambda(g_task: Tensor, g_sp: Tensor, s_err: float) -> float:
    """lambda* = ||g_task|| / (||g_sp|| + 1e-12) while the expected count exceeds the slack, else 0."""
    if s_err <= 0:
        return 0.0
    return float(g_task.norm() / (g_sp.norm() + 1e-12))


class SparsityControl:
    """Combines the objective's gradient with the sparsity gradient into theta.grad."""

    def __init__(self, cfg: CTSConfig, density: float, mask_lr: float) -> None:
        self.cfg = cfg
        self.density = density
        self.mask_lr = mask_lr
        self.lam = 0.0
        self.steps = 0

    @property
    def slack(self) -> float:
        return self.cfg.slack if self.cfg.control == Control.gradbalance else 1.0

    def gradient(self, theta: Tensor, g_task: Tensor) -> tuple[Tensor, float]:
        """theta.grad for this step, and s_err."""
        s_err, g_sp = sparsity_error(theta.detach(), self.density, self.slack)
        err = float(s_err)
        if self.cfg.control == Control.gradbalance:
            target = gradbalance_lambda(g_task, g_sp, err)
            ema = self.cfg.lambda_ema
            self.lam = target if self.steps == 0 else ema * self.lam + (1 - ema) * target
            grad = torch.add(g_task, g_sp, alpha=self.lam)
        else:
            # Lagrangian R + lam * s_err (target exactly d): descend on theta, ascend on lam.
            grad = torch.add(g_task, g_sp, alpha=self.lam)
            self.lam += 0.01 * self.mask_lr * err
        self.steps += 1
        return grad, err

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam, self.steps = float(state["lam"]), int(state["steps"])


# -- the search --------------------------------------------------------------------------------------------
def search_epochs(cfg: CTSConfig, train_epochs: int) -> int:
    if cfg.epochs > 0:
        return cfg.epochs
    return max(1, math.floor(LENGTHS[Length(cfg.length).value] * train_epochs + 0.5))


def drop_epoch(cfg: CTSConfig, epochs: int) -> int | None:
    """Epoch after which the mask lr is multiplied by lr_drop_factor (once), or None."""
    if cfg.lr_drop_epoch == 0:
        return None
    if cfg.lr_drop_epoch > 0:
        return cfg.lr_drop_epoch if cfg.lr_drop_epoch < epochs else None
    return math.floor(0.875 * epochs + 0.5) if epochs >= 8 else None


class LogitLayout:
    """One flat logit vector over all prunable weights, and the views that map it back to layers."""

    def __init__(self, weights: dict[str, Tensor]) -> None:
        self.names = list(weights)
        self.shapes = [weights[n].shape for n in self.names]
        self.sizes = [weights[n].numel() for n in self.names]
        self.weights = weights
        self.total = sum(self.sizes)

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        return {n: part.view(shape) for n, part, shape in zip(self.names, flat.split(self.sizes), self.shapes,
                                                              strict=True)}

    def masked_weights(self, mask: Tensor) -> dict[str, Tensor]:
        return {n: self.weights[n] * m for n, m in self.split(mask).items()}


def per_sample_function(model: nn.Module) -> bool:
    """True when the network's output for a sample depends on that sample alone: no BatchNorm (the search
    runs it on batch statistics, which couple the samples of a batch) and no active dropout."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return False
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            return False
    return True


class ConcreteSearch:
    """The optimisation state of one search (theta, Adam, the sparsity control) and its steps.

    The network runs with BatchNorm on batch statistics; `batch_statistics` in `CTSPruner.prune`
    restores the saved running statistics afterwards.
    """

    def __init__(self, model: nn.Module, weights: dict[str, Tensor], density: float, cfg: CTSConfig,
                 objective: Objective, objective_name: str, autocast: Callable[[], Any]) -> None:
        self.model = model
        self.layout = LogitLayout(weights)
        self.device = next(iter(weights.values())).device
        self.density = density
        self.cfg = cfg
        self.objective = objective
        self.objective_name = objective_name
        self.needs_teacher = objective.needs_teacher
        self.autocast = autocast
        init = math.log(density / (1 - density)) if density < 1 else 20.0  # theta_i = logit(d)
        self.theta = torch.full((self.layout.total,), init, device=self.device, requires_grad=True)
        # the fused kernel (same algorithm) is 2.4x faster than the default for one large tensor
        self.optimizer = torch.optim.Adam([self.theta], lr=cfg.lr, fused=self.device.type in ("cpu", "cuda"))
        self.control = SparsityControl(cfg, density, cfg.lr)
        self.s_err = 0.0
        self.cached_teacher: Tensor | None = None

    def teacher_cache_reason(self, data: Data) -> str | None:
        """Why the teacher's logits cannot be cached for this search (None: they can)."""
        if not self.needs_teacher:
            return "the objective needs no teacher"
        if not self.cfg.cache_teacher:
            return "pruner.cache_teacher=false"
        if not per_sample_function(self.model):
            return "the network has BatchNorm or active dropout"
        nbytes = data.train_x.shape[0] * data.num_classes * 4
        if nbytes > TEACHER_CACHE_LIMIT:
            return f"the logits would take {nbytes / 2**20:.0f} MiB"
        return None

    def step(self, x: Tensor, y: Tensor, noise: Tensor, teacher: Tensor | None = None) -> float:
        """One minibatch: soft mask from this step's fresh `noise`, objective, GradBalance gradient, Adam
        step. `teacher`: the unmasked network's logits for `x` when already known."""
        if self.needs_teacher and teacher is None:
            with torch.no_grad(), self.autocast():
                teacher = self.model(x).float()
        mask = soft_mask(self.theta, noise, self.cfg.temperature)
        with self.autocast():
            student = functional_call(self.model, self.layout.masked_weights(mask), (x,))
        value = self.objective.value(student.float(), teacher, y)
        (g_task,) = torch.autograd.grad(value, self.theta)
        self.theta.grad, self.s_err = self.control.gradient(self.theta, g_task)
        self.optimizer.step()
        return float(value.detach())

    def run_epoch(self, data: Data, batch_size: int, seed: int, epoch: int,
                  advance: Callable[[], None] = lambda: None) -> dict[str, Any]:
        """One pass over the (un-augmented) training set; data order and noise seeded by the epoch.

        The first epoch of a search whose teacher can be cached computes the cache (one forward pass)."""
        t0 = time.perf_counter()
        teacher_samples = 0
        if self.cached_teacher is None and self.teacher_cache_reason(data) is None:
            # in batches of the search's size, so that each logit comes from the same kernels as in a step
            inputs = (x for x, _ in data.eval_batches("train", batch_size, self.device))
            self.cached_teacher = predict(self.model, inputs, self.autocast)
            teacher_samples = data.train_x.shape[0]
        data_gen = generator(seed, "cts", "epoch", epoch)
        noise_gen = generator(seed, "cts", "noise", epoch, device=self.device)
        total, seen = 0.0, 0
        order = data.train_order(batch_size, data_gen)
        for idx, (x, y) in zip(order, data.train_batches_at(order, self.device), strict=True):
            teacher = None if self.cached_teacher is None else self.cached_teacher[idx.to(self.device)]
            noise = logistic_noise(self.layout.total, noise_gen, self.device)
            total += self.step(x, y, noise, teacher) * y.numel()
            seen += y.numel()
            if self.needs_teacher and teacher is None:
                teacher_samples += y.numel()
            advance()
        with torch.no_grad():
            expected = float(torch.sigmoid(self.theta).mean())
            positive = float((self.theta > 0).float().mean())
        return {"epoch": epoch + 1, "objective": total / seen, "expected_density": expected,
                "density_theta_positive": positive, "target_density": self.density,
                "lambda": self.control.lam, "s_err": self.s_err, "lr": self.optimizer.param_groups[0]["lr"],
                "samples": seen, "teacher_samples": teacher_samples, "time": time.perf_counter() - t0}

    def drop_lr(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def scores(self) -> dict[str, Tensor]:
        return {n: t.detach().float().cpu() for n, t in self.layout.split(self.theta.detach()).items()}

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.detach().cpu(), "optimizer": self.optimizer.state_dict(),
                "control": self.control.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.theta.copy_(state["theta"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.control.load_state_dict(state["control"])


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
        if search.needs_teacher:
            reason = search.teacher_cache_reason(ctx.data)
            log.info("cts: %s", "teacher logits computed once and reused every epoch" if reason is None
                     else f"teacher runs every step ({reason})")
        loop = EpochLoop(work, start_epoch=0, end_epoch=epochs,
                         steps_per_epoch=math.ceil(ctx.data.train_x.shape[0] / batch), description="cts search",
                         progress=ctx.runtime.progress, keep_checkpoints=ctx.runtime.keep_checkpoints,
                         callbacks=ctx.callbacks)
        with batch_statistics(ctx.model):
            history = loop.run(SearchEpochs(search, ctx.data, batch, ctx.seed, epochs, work))
        work.mark_done(epochs=epochs)
        scores = search.scores()
        info = {"epochs": epochs, "objective": search.objective_name, "control": Control(cfg.control).value,
                "final": history[-1] if history else None, "history": history}
        return PruneResult(masks=topk_masks(scores, ctx.keep), scores=scores, info=info)
