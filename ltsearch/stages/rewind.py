"""Stage `rewind`: the ticket = the starting weights (w0, or w_k at the rewind point) with the mask applied.

Writes ticket.pt: {"state_dict": effective weights (zeros where pruned), "masks", "start_epoch"}.
"""

from __future__ import annotations

from typing import Any

from ltsearch.masking import attach_masks, load_plain_state_dict, plain_state_dict
from ltsearch.pipeline import RunContext
from ltsearch.rundir import StageDir

REQUIRES = ("search",)


def run(ctx: RunContext, out: StageDir) -> dict[str, Any]:
    search = ctx.stage("search")
    masks = search.load_tensors("mask.pt")
    model = ctx.new_model()
    load_plain_state_dict(model, search.load_tensors("pruning_point.pt"))
    attach_masks(model, masks)
    out.save_tensors("ticket.pt", {"state_dict": plain_state_dict(model), "masks": masks,
                                   "start_epoch": ctx.pruning_epoch})
    return {"start_epoch": ctx.pruning_epoch}
