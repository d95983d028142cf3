"""The Concrete relaxation of a binary mask and its optimisation (the core of Concrete Ticket Search, see
`ltsearch.pruners.cts` for the method and its options).

The weights stay frozen; one global vector of logits `theta` (one per prunable weight) is optimised with
Adam. Every minibatch draws fresh logistic noise L and uses the soft mask m = sigmoid(L / tau + theta) in
the forward pass (`torch.func.functional_call` with w * m, so the model itself is never modified).

Sparsity is controlled by GradBalance: with s_err = 100 (sum sigmoid(theta) / (slack d N) - 1), the
gradient of s_err is added to the objective's gradient with a weight lambda that balances the two norms,
lambda* = ||g_task|| / ||g_sp|| while s_err > 0 (else 0), smoothed by an EMA of 0.99. The `lagrange` control
is the paper's ablation (a multiplier updated by gradient ascent, no slack).

Several processes (`ltsearch.distributed`): every rank draws the same noise (seeded by the seed and the
epoch only) and holds the same theta; each computes the gradient of its rows of the batch and the ranks
average it. GradBalance's lambda* over ranks (`pruner.ddp_lambda`): `authors` averages the ranks' own
targets ||g_task,r|| / ||g_sp|| (what the authors' code all-reduces; it grows with the number of ranks, since
the norm of each rank's gradient exceeds that of their mean), `global` takes lambda* of the averaged
gradient (the same as one process on the same global batches).

Teacher cache: when the network is a per-sample function (no BatchNorm, no active dropout), the teacher's
logits are computed once per search and looked up afterwards: the weights are frozen and the search never
augments, so each sample's teacher logits are the same in every epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

import ltsearch.distributed as distributed
from ltsearch.data import Data
from ltsearch.objectives import MaskedNetwork, Objective
from ltsearch.seeding import generator
from ltsearch.training.evaluate import predict

if TYPE_CHECKING:
    from ltsearch.pruners.cts import CTSConfig

NOISE_CLAMP = 1e-10
TEACHER_CACHE_LIMIT = 1 << 30  # bytes of cached teacher logits beyond which the teacher runs every step


class Control(str, Enum):
    gradbalance = "gradbalance"
    lagrange = "lagrange"


class BatchNormMode(str, Enum):
    """How BatchNorm normalises during the search: `batch` (each batch's statistics, as the CTS authors'
    networks always do) or `running` (the running statistics of the pruning-point network, fixed)."""

    batch = "batch"
    running = "running"


# -- the formulas ------------------------------------------------------------------------------------------
def logistic_noise(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """L = log u - log(1 - u), u ~ U(0, 1) clamped to [1e-10, 1 - 1e-10].

    `torch.logit(u, eps)` is exactly this formula (it clamps u to [eps, 1 - eps] first), in one pass instead
    of two logarithms and a subtraction."""
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
    """Combines the objective's gradient with the sparsity gradient into theta.grad.

    `lagrange_lr` (0.01 x the mask lr, as in the CTS authors' ablation) is the step of the multiplier's
    gradient ascent; it drops with the mask lr (`drop_lr`)."""

    def __init__(self, cfg: CTSConfig, density: float, mask_lr: float) -> None:
        self.cfg = cfg
        self.density = density
        self.lagrange_lr = 0.01 * mask_lr
        self.lam = 0.0
        self.steps = 0

    @property
    def slack(self) -> float:
        return self.cfg.slack if self.cfg.control == Control.gradbalance else 1.0

    def gradient(self, theta: Tensor, g_task: Tensor) -> tuple[Tensor, float]:
        """theta.grad for this step, and s_err. `g_task`: this process's gradient of the objective (of its
        rows of the batch in a distributed run, weighted so that the ranks' mean is the batch's gradient)."""
        s_err, g_sp = sparsity_error(theta.detach(), self.density, self.slack)
        err = float(s_err)
        g_mean = distributed.mean(g_task)
        if self.cfg.control == Control.gradbalance:
            target = self.lambda_target(g_task, g_mean, g_sp, err)
            ema = self.cfg.lambda_ema
            self.lam = target if self.steps == 0 else ema * self.lam + (1 - ema) * target
            grad = torch.add(g_mean, g_sp, alpha=self.lam)
        else:
            # Lagrangian R + lam * s_err (target exactly d): descend on theta, ascend on lam.
            grad = torch.add(g_mean, g_sp, alpha=self.lam)
            self.lam += self.lagrange_lr * err
        self.steps += 1
        return grad, err

    def lambda_target(self, g_task: Tensor, g_mean: Tensor, g_sp: Tensor, err: float) -> float:
        """lambda* of this step: of the ranks' mean gradient (`global`), or the ranks' mean of their own
        (`authors`); the same on one process."""
        if self.cfg.ddp_lambda == "global":
            return gradbalance_lambda(g_mean, g_sp, err)
        return distributed.mean_scalar(gradbalance_lambda(g_task, g_sp, err), g_task.device)

    def drop_lr(self, factor: float) -> None:
        self.lagrange_lr *= factor

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam, "steps": self.steps, "lagrange_lr": self.lagrange_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam, self.steps = float(state["lam"]), int(state["steps"])
        self.lagrange_lr = float(state.get("lagrange_lr", self.lagrange_lr))


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



def per_sample_function(model: nn.Module, batch_statistics: bool = True) -> bool:
    """True when the network's output for a sample depends on that sample alone: no active dropout, and no
    BatchNorm that normalises with the statistics of the batch (`batch_statistics`: the search runs every
    BatchNorm on batch statistics; else only those without running statistics do)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (batch_statistics or m.training
                                                                or not m.track_running_stats):
            return False
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            return False
    return True


class ConcreteSearch:
    """The optimisation state of one search (theta, Adam, the sparsity control) and its steps.

    BatchNorm (`pruner.batchnorm`): on batch statistics (`batch_statistics` in `CTSPruner.prune` restores
    the saved running statistics afterwards), or on the running statistics saved at the pruning point (the
    network in evaluation mode).
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
        self.needs_teacher = objective.teacher == "logits"
        self.autocast = autocast
        init = math.log(density / (1 - density)) if density < 1 else 20.0  # theta_i = logit(d)
        self.theta = torch.full((self.layout.total,), init, device=self.device, requires_grad=True)
        # the fused kernel: the same algorithm in one kernel for the one large tensor
        self.optimizer = torch.optim.Adam([self.theta], lr=cfg.lr, fused=self.device.type in ("cpu", "cuda"))
        self.control = SparsityControl(cfg, density, cfg.lr)
        self.s_err = 0.0
        self.cached_teacher: Tensor | None = None

    def teacher_cache_reason(self, data: Data) -> str | None:
        """Why the teacher's logits cannot be cached for this search (None: they can)."""
        if not self.needs_teacher:
            return ("the objective needs no teacher" if self.objective.teacher == "none"
                    else "the objective needs more of the unmasked network than its logits")
        if not self.cfg.cache_teacher:
            return "pruner.cache_teacher=false"
        if not per_sample_function(self.model, self.cfg.batchnorm == BatchNormMode.batch):
            return "the network has BatchNorm on batch statistics or active dropout"
        nbytes = data.train_size * data.num_classes * 4
        if nbytes > TEACHER_CACHE_LIMIT:
            return f"the logits would take {nbytes / 2**20:.0f} MiB"
        return None

    def step(self, x: Tensor, y: Tensor, noise: Tensor, teacher: Tensor | None = None, weight: float = 1.0) -> float:
        """One minibatch: soft mask from this step's fresh `noise`, objective, GradBalance gradient, Adam
        step on the objective times its scale. `teacher`: the unmasked network's logits for `x` when already
        known; `weight`: this rank's factor on its gradient in a distributed run (`Shard.weight`). Returns the
        unscaled objective."""
        mask = soft_mask(self.theta, noise, self.cfg.temperature)
        net = MaskedNetwork(self.model, self.layout.weights, self.layout.split(mask), self.autocast)
        if self.needs_teacher and teacher is None:
            with torch.no_grad():
                teacher = net.logits(x, masked=False)
        value = self.objective.value(net, x, y, teacher)
        scaled = value * self.objective.scale
        (g_task,) = torch.autograd.grad(scaled * weight if weight != 1.0 else scaled, self.theta)
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
            teacher_samples = data.train_size
        data_gen = generator(seed, "cts", "epoch", epoch)
        noise_gen = generator(seed, "cts", "noise", epoch, device=self.device)
        total, seen, teacher_runs = 0.0, 0, 0
        order, shard = data.train_order(batch_size, data_gen), data.shard
        for idx, (x, y) in zip(order, data.train_batches_at(order, self.device), strict=True):
            mine = shard.size(len(idx))  # this rank's rows of the batch (see Shard)
            teacher = None if self.cached_teacher is None else self.cached_teacher[shard.take(idx).to(self.device)]
            noise = logistic_noise(self.layout.total, noise_gen, self.device)
            total += self.step(x, y, noise, teacher, shard.weight(len(idx))) * mine
            seen += mine
            if self.needs_teacher and teacher is None:
                teacher_runs += mine
            advance()
        if shard.world > 1:
            total, seen_all, runs_all = distributed.sum_floats(total, seen, teacher_runs)
            seen, teacher_runs = int(seen_all), int(runs_all)
        teacher_samples += teacher_runs
        with torch.no_grad():
            expected = float(torch.sigmoid(self.theta).mean())
            positive = float((self.theta > 0).float().mean())
        extra = {kind: passes * seen for kind, passes in self.objective.extra_passes.items()}
        return {"epoch": epoch + 1, "objective": total / seen, "expected_density": expected,
                "density_theta_positive": positive, "target_density": self.density,
                "lambda": self.control.lam, "s_err": self.s_err, "lr": self.optimizer.param_groups[0]["lr"],
                "samples": seen, "teacher_samples": teacher_samples, "extra_samples": extra,
                "time": time.perf_counter() - t0}

    def drop_lr(self, factor: float) -> None:
        """Multiply the mask lr (and the Lagrange multiplier's) by `factor`, keeping Adam's moments."""
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        self.control.drop_lr(factor)

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
