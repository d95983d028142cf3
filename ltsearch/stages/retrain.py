"""Stage `retrain`: train the ticket from its start epoch to the end of the schedule.

Writes metrics.json (one record per epoch), checkpoints/ (resumable), final.pt (weights and masks).
"""

from __future__ import annotations

from typing import Any

from ltsearch.context import RunContext
from ltsearch.masking import plain_state_dict
from ltsearch.paths import FINAL, REWIND, TICKET
from ltsearch.rundir import ArtifactDir


def run(ctx: RunContext, out: ArtifactDir) -> dict[str, Any]:
    model, ticket = ctx.load_network(REWIND, TICKET)
    history = ctx.train(model, "retrain", out, start_epoch=int(ticket["start_epoch"]))
    out.save_tensors(FINAL, {"state_dict": plain_state_dict(model), "masks": ticket["masks"]})
    last = history[-1] if history else {}
    summary = f"test accuracy {last['test_acc']:.4f} at epoch {last['epoch']}" if "test_acc" in last else ""
    return {"epochs": len(history), "test_acc": last.get("test_acc"), "summary": summary}
