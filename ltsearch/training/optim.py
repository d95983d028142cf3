"""Optimizers and learning-rate schedules, stepped per iteration so that a run can start mid-schedule
(retraining from the rewind point continues the schedule at epoch k)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ltsearch.config import Optimizer, Schedule, TrainConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == Optimizer.sgd:
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    betas = (cfg.betas[0], cfg.betas[1])
    if cfg.optimizer == Optimizer.adam:
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at global iteration `step` of the schedule."""
    epoch = step // steps_per_epoch
    factor = 1.0
    if cfg.schedule == Schedule.multistep:
        factor = cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    elif cfg.schedule == Schedule.cosine:
        factor = 0.5 * (1.0 + math.cos(math.pi * step / (cfg.epochs * steps_per_epoch)))
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    if warmup_steps > 0 and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                    start_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule that begins at epoch `start_epoch` of `cfg`'s schedule."""
    offset = start_epoch * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(cfg, i + offset, steps_per_epoch))
