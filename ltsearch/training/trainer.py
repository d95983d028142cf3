"""Weight training: epochs [start, end) of a schedule, resumable at every epoch boundary (one `EpochTask`
of the shared loop in `ltsearch.training.loop`).

Data order and augmentation of epoch e come from a generator seeded by (seed, stream, e), and the checkpoint
holds model, optimizer, scheduler and torch RNG states, so a run killed at any point and resumed from its
last checkpoint reproduces an uninterrupted run exactly (on the same machine). `stream` names the run's use
of the schedule ("dense", "retrain", "imp-level-3"): phases that must see the same data order share it.

Masks: a model arrives with its masks attached as parametrizations (w * mask in forward). The loop trains
the effective weights directly and re-applies the masks in place after every optimizer step (one fused
multiply), so the forward pass always sees exactly w * mask without the parametrization's per-step cost.
Kept weights follow the same arithmetic as under the parametrization; pruned weights are 0 before every
forward. The masks are attached again when `fit` returns.

Several processes (`ltsearch.distributed`): the model trains under DistributedDataParallel; each rank
computes its rows of every global batch (`Data.shard`), its mean loss is weighted so that DDP's average of
the ranks' gradients is the gradient of the global batch's mean loss, and the epoch's loss and accuracy are
summed over the ranks, so N processes train what one process trains (to float tolerance). BatchNorm: each
rank normalises with its own rows' statistics unless `runtime.sync_batchnorm` (SyncBatchNorm, CUDA only);
after every epoch all ranks take rank 0's running statistics, which is what rank 0 saves.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import ltsearch.distributed as distributed
from ltsearch.config import TrainConfig
from ltsearch.data import Data
from ltsearch.errors import DivergenceError
from ltsearch.masking import Masks, attach_masks, detach_masks, masks_of, prunable_modules
from ltsearch.rundir import ArtifactDir
from ltsearch.runtime import Runtime
from ltsearch.seeding import generator
from ltsearch.training.evaluate import evaluate
from ltsearch.training.loop import Callback, EpochLoop, Record
from ltsearch.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class Trainer:
    """Trains `model` in place over epochs [start_epoch, end_epoch) of the schedule `cfg`, under `out`."""

    def __init__(self, *, model: nn.Module, data: Data, cfg: TrainConfig, runtime: Runtime, out: ArtifactDir,
                 seed: int, stream: str, start_epoch: int, end_epoch: int | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.model = model
        self.data = data
        self.cfg = cfg
        self.runtime = runtime
        self.out = out
        self.seed = seed
        self.stream = stream
        self.start_epoch = start_epoch
        self.end_epoch = cfg.epochs if end_epoch is None else end_epoch
        self.steps_per_epoch = math.ceil(data.train_size / cfg.batch_size)
        self.masks: Masks = masks_of(model)
        self._masked_weights, self._mask_values = self._in_place_masks(model, self.masks)
        self.optimizer = build_optimizer(model.parameters(), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch, start_epoch)
        self._batchnorms = self._sync_batchnorm(model) if runtime.sync_batchnorm and self.data.shard.world > 1 else {}
        self.forward = self._wrap(model)
        self.loop = EpochLoop(out, start_epoch=start_epoch, end_epoch=self.end_epoch,
                              steps_per_epoch=self.steps_per_epoch, description=out.path.name,
                              progress=runtime.progress, keep_checkpoints=runtime.keep_checkpoints,
                              checkpoint_every=runtime.checkpoint_every, callbacks=callbacks)

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

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module that runs the forward pass: DDP across processes, then torch.compile if asked."""
        forward: nn.Module = model
        if self.data.shard.world > 1:
            device = self.runtime.device
            forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return torch.compile(forward) if self.runtime.compile else forward

    @staticmethod
    def _sync_batchnorm(model: nn.Module) -> dict[str, nn.Module]:
        """Swap BatchNorm for SyncBatchNorm (sharing parameters and buffers) for the training; returns the
        original modules by name, which `fit` puts back."""
        originals = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return originals

    def _apply_masks(self) -> None:
        if self._masked_weights:
            with torch.no_grad():
                torch._foreach_mul_(self._masked_weights, self._mask_values)

    @property
    def history(self) -> list[Record]:
        """The records of the epochs trained so far (also those of earlier sessions, after `fit`)."""
        return self.loop.history

    # -- the loop's task -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def fit(self) -> list[Record]:
        """Train to `end_epoch` (continuing from the newest checkpoint); the masks are re-attached on return."""
        try:
            return self.loop.run(self)
        finally:
            for name, module in self._batchnorms.items():
                parent, _, child = name.rpartition(".")
                self.model.get_submodule(parent).add_module(child, module)
            if self.masks:
                attach_masks(self.model, self.masks)

    def run_epoch(self, epoch: int, advance: Callable[[], None]) -> Record:
        """One training epoch, then the test split (both counted in the folder's compute)."""
        record = self.train_epoch(epoch, advance)
        self.out.count("train", record["samples"])
        test = evaluate(self.model, self.data, self.runtime, "test", self.cfg.eval_batch_size)
        self.out.count("forward", self.data.test_size)
        record.update(test_loss=test["loss"], test_acc=test["acc"])
        return record

    def summary(self, record: Record) -> str:
        return f"test acc {record['test_acc']:.4f}"

    def train_epoch(self, epoch: int, advance: Callable[[], None] = lambda: None) -> Record:
        self.model.train()
        gen = generator(self.seed, self.stream, "epoch", epoch)
        device = self.runtime.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        seen = torch.zeros((), dtype=torch.int64, device=device)
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        shard, size = self.data.shard, self.cfg.batch_size
        for step, (x, y) in enumerate(self.data.train_batches(size, gen, True, device)):
            n = min(size, self.data.train_size - step * size)  # the global batch
            if self.runtime.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.runtime.autocast():
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * shard.weight(n) if shard.world > 1 else loss).backward()
            self.optimizer.step()
            self._apply_masks()
            self.scheduler.step()
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
            mine = shard.size(n)  # 0: this rank computed a placeholder sample of weight 0
            loss_sum += loss.detach().double() * mine
            correct += (logits.detach().argmax(1) == y).sum() * (mine > 0)
            seen += mine
            advance()
            if device.type == "cpu" or step % 50 == 49:
                self._check(first_bad, epoch)
        self._check(first_bad, epoch)
        distributed.sum_(loss_sum, correct, seen)
        distributed.broadcast_buffers(self.model)
        return {"epoch": epoch + 1, "lr": lr, "train_loss": float(loss_sum) / int(seen),
                "train_acc": float(correct) / int(seen), "samples": int(seen), "time": time.perf_counter() - t0}

    def _check(self, first_bad: torch.Tensor, epoch: int) -> None:
        step = distributed.max_int(int(first_bad))
        if step >= 0:
            raise DivergenceError(
                f"stage {self.out.label}: the training loss became NaN/Inf at epoch {epoch + 1}, step {step + 1} "
                f"of {self.steps_per_epoch}; the stage stopped without completing (nothing of this epoch was "
                f"saved). Resume after changing a runtime-only setting (e.g. runtime.precision=fp32), or start "
                f"a new run with a lower train.lr")

    def log_epoch(self, r: Record, end_epoch: int) -> None:
        log.info("%s epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  lr %.4g  (%.1fs)",
                 self.out.path.name, r["epoch"], end_epoch, r["train_loss"], r["train_acc"], r["test_loss"],
                 r["test_acc"], r["lr"], r["time"])
