"""Stage `retrain`: train the ticket from its start epoch to the end of the schedule.

Writes metrics.json (one record per epoch), checkpoints/ (resumable), final.pt (weights and masks).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ltsearch.masking import attach_masks, load_plain_state_dict, plain_state_dict
from ltsearch.pipeline import RunContext
from ltsearch.rundir import StageDir

REQUIRES = ("rewind",)


def load_ticket(ctx: RunContext) -> tuple[nn.Module, dict[str, Any]]:
    ticket = ctx.stage("rewind").load_tensors("ticket.pt")
    model = ctx.new_model()
    load_plain_state_dict(model, ticket["state_dict"])
    attach_masks(model, ticket["masks"])
    return model, ticket


def run(ctx: RunContext, out: StageDir) -> dict[str, Any]:
    model, ticket = load_ticket(ctx)
    history = ctx.train(model, "retrain", out, start_epoch=int(ticket["start_epoch"]))
    out.save_tensors("final.pt", {"state_dict": plain_state_dict(model), "masks": ticket["masks"]})
    last = history[-1] if history else {}
    return {"epochs": len(history), "test_acc": last.get("test_acc")}
