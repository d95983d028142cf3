"""Stage `rewind`: the ticket = the starting weights (w0, or w_k at the rewind point) with the mask applied.

Writes ticket.pt: {"state_dict": effective weights (zeros where pruned), "masks", "start_epoch",
"input_shape", "num_classes"} (the last two let `ltsearch.load_ticket` build the network without the data).
"""

from __future__ import annotations

from typing import Any

from ltsearch.context import RunContext
from ltsearch.masking import plain_state_dict
from ltsearch.paths import MASK, PRUNING_POINT, SEARCH, TICKET
from ltsearch.rundir import ArtifactDir


def run(ctx: RunContext, out: ArtifactDir) -> dict[str, Any]:
    search = ctx.stage_dir(SEARCH)
    masks = search.load_tensors(MASK)
    model = ctx.model_with(search.load_tensors(PRUNING_POINT), masks)
    out.save_tensors(TICKET, {"state_dict": plain_state_dict(model), "masks": masks,
                              "start_epoch": ctx.pruning_epoch, "input_shape": list(ctx.data.input_shape),
                              "num_classes": ctx.data.num_classes})
    return {"start_epoch": ctx.pruning_epoch, "summary": f"the ticket starts at epoch {ctx.pruning_epoch}"}
