"""The training loop: epochs [start, end) of a schedule, resumable at every epoch boundary.

Data order and augmentation of epoch e come from a generator seeded by (seed, key, e), and the checkpoint
holds model, optimizer, scheduler and torch RNG states, so a run killed at any point and resumed from its
last checkpoint reproduces an uninterrupted run exactly (on the same machine). Behaviour that differs
between phases (logging, early checks) goes into callbacks, not into `if`s here.

Masks: a model arrives with its masks attached as parametrizations (w * mask in forward). For speed the
loop trains the effective weights directly and re-applies the masks in place after every optimizer step
(one fused multiply), so the forward pass always sees exactly w * mask without the parametrization's
per-step cost (1.10x -> 1.03x step time on LeNet-300-100, scripts/bench_perf.py). Kept weights follow
the same arithmetic as under the parametrization; pruned weights are 0 before every forward. The masks
are attached again when `fit` returns.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ltsearch.config import TrainConfig
from ltsearch.data import Data
from ltsearch.errors import DivergenceError
from ltsearch.masking import Masks, attach_masks, detach_masks, masks_of, prunable_modules
from ltsearch.rundir import StageDir
from ltsearch.runtime import Runtime, progress_bar
from ltsearch.seeding import generator
from ltsearch.storage import save_json
from ltsearch.training.checkpoints import Checkpoints
from ltsearch.training.evaluate import evaluate
from ltsearch.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class Callback:
    """Hooks into the loop; override what you need."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        pass


class Trainer:
    def __init__(self, *, model: nn.Module, data: Data, cfg: TrainConfig, runtime: Runtime, out: StageDir,
                 seed: int, key: str, start_epoch: int, end_epoch: int | None = None,
                 callbacks: Sequence[Callback] = (), eval_every: int = 1) -> None:
        self.model = model
        self.data = data
        self.cfg = cfg
        self.runtime = runtime
        self.out = out
        self.seed = seed
        self.key = key
        self.start_epoch = start_epoch
        self.end_epoch = cfg.epochs if end_epoch is None else end_epoch
        self.callbacks = list(callbacks)
        self.eval_every = eval_every
        self.steps_per_epoch = math.ceil(data.train_x.shape[0] / cfg.batch_size)
        self.masks: Masks = masks_of(model)
        self._masked_weights, self._mask_values = self._in_place_masks(model, self.masks)
        self.optimizer = build_optimizer(model.parameters(), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch, start_epoch)
        self.checkpoints = Checkpoints(out.path / "checkpoints", keep=runtime.keep_checkpoints)
        self.history: list[dict[str, Any]] = []
        self.forward = torch.compile(model) if runtime.compile else model

    @staticmethod
    def _in_place_masks(model: nn.Module, masks: Masks) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Detach the mask parametrizations (keeping w * mask as the weights); return (weights, masks)."""
        if not masks:
            return [], []
        detach_masks(model)
        modules = prunable_modules(model)
        weights = [modules[name].weight for name in masks]
        values = [masks[name].to(w.device, w.dtype) for name, w in zip(masks, weights, strict=True)]
        return weights, values

    def _apply_masks(self) -> None:
        if self._masked_weights:
            with torch.no_grad():
                torch._foreach_mul_(self._masked_weights, self._mask_values)

    # -- state -----------------------------------------------------------------------------------------
    def state(self, next_epoch: int) -> dict[str, Any]:
        state = {
            "epoch": next_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "clock": self.out.clock_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def restore(self) -> int:
        """Load the newest good checkpoint; return the epoch to continue from."""
        state = self.checkpoints.latest()
        if state is None:
            return self.start_epoch
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if "clock" in state:
            self.out.restore_clock(state["clock"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("%s: resuming at epoch %d/%d from a checkpoint", self.out.path.name, state["epoch"], self.end_epoch)
        return int(state["epoch"])

    # -- loop ------------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Train to `end_epoch` (continuing from the newest checkpoint); the masks are re-attached on return."""
        try:
            return self._fit()
        finally:
            if self.masks:
                attach_masks(self.model, self.masks)

    def _fit(self) -> list[dict[str, Any]]:
        first = self.restore()
        if first >= self.end_epoch:
            return self._finish()
        with progress_bar(self.runtime.progress) as bar:
            task = bar.add_task(self.out.path.name, total=(self.end_epoch - first) * self.steps_per_epoch, info="")
            for epoch in range(first, self.end_epoch):
                record = self.train_epoch(epoch, lambda: bar.advance(task))
                last = epoch + 1 == self.end_epoch
                self.out.count("train", record["samples"])
                if last or (epoch + 1 - self.start_epoch) % self.eval_every == 0:
                    test = evaluate(self.model, self.data, self.runtime, "test", self.cfg.eval_batch_size)
                    self.out.count("forward", self.data.test_x.shape[0])
                    record.update(test_loss=test["loss"], test_acc=test["acc"])
                    bar.update(task, info=f"test acc {test['acc']:.4f}")
                self.history.append(record)
                self._log(record)
                for callback in self.callbacks:
                    callback.on_epoch_end(self, record)
                if last or (epoch + 1 - self.start_epoch) % self.runtime.checkpoint_every == 0:
                    self.checkpoints.save(epoch + 1, self.state(epoch + 1))
                    save_json(self.out.path / "metrics.json", self.history)
                    self.out.checkpoint_clock()
        return self._finish()

    def _finish(self) -> list[dict[str, Any]]:
        """Write metrics.json once more from the (checksummed) history and record it in the stage's manifest,
        so that its completion marker covers it (also when a session resumed after the last checkpoint)."""
        self.out.manifest["metrics.json"] = save_json(self.out.path / "metrics.json", self.history)
        return self.history

    def train_epoch(self, epoch: int, advance: Any = lambda: None) -> dict[str, Any]:
        self.model.train()
        gen = generator(self.seed, self.key, "epoch", epoch)
        device = self.runtime.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        seen, t0 = 0, time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        for step, (x, y) in enumerate(self.data.train_batches(self.cfg.batch_size, gen, True, device)):
            if self.runtime.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.runtime.autocast():
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self._apply_masks()
            self.scheduler.step()
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
            loss_sum += loss.detach().double() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            advance()
            if device.type == "cpu" or step % 50 == 49:
                self._check(first_bad, epoch)
        self._check(first_bad, epoch)
        return {"epoch": epoch + 1, "lr": lr, "train_loss": float(loss_sum) / seen,
                "train_acc": float(correct) / seen, "samples": seen, "time": time.perf_counter() - t0}

    def _check(self, first_bad: torch.Tensor, epoch: int) -> None:
        step = int(first_bad)
        if step >= 0:
            raise DivergenceError(
                f"stage {self.out.label}: the training loss became NaN/Inf at epoch {epoch + 1}, step {step + 1} "
                f"of {self.steps_per_epoch}; the stage stopped without completing (nothing of this epoch was "
                f"saved). Resume after changing a runtime-only setting (e.g. runtime.precision=fp32), or start "
                f"a new run with a lower train.lr")

    def _log(self, r: dict[str, Any]) -> None:
        test = f"  test loss {r['test_loss']:.4f} acc {r['test_acc']:.4f}" if "test_acc" in r else ""
        log.info("%s epoch %d/%d  train loss %.4f acc %.4f%s  lr %.4g  (%.1fs)", self.out.path.name, r["epoch"],
                 self.end_epoch, r["train_loss"], r["train_acc"], test, r["lr"], r["time"])
