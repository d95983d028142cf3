"""The stage registry: the pipeline's stages in the order they run, each with the stages whose output it
reads. A stage is a function `run(ctx, out) -> dict | None` in its own module, writing its artifacts into
its folder `out` (the run folder's subfolder named after the stage); the pipeline marks it done.

Adding a stage: a module here with `run`, one line in `STAGES`, and its name in `stages` of conf/config.yaml
if it should run by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ltsearch.context import RunContext
from ltsearch.paths import EVALUATE, RETRAIN, REWIND, SANITY, SEARCH
from ltsearch.rundir import ArtifactDir
from ltsearch.stages import evaluate, retrain, rewind, sanity, search

__all__ = ["STAGES", "Stage"]


@dataclass(frozen=True)
class Stage:
    run: Callable[[RunContext, ArtifactDir], dict[str, Any] | None]
    requires: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {
    SEARCH: Stage(search.run),
    REWIND: Stage(rewind.run, requires=(SEARCH,)),
    RETRAIN: Stage(retrain.run, requires=(REWIND,)),
    SANITY: Stage(sanity.run, requires=(RETRAIN,)),
    EVALUATE: Stage(evaluate.run, requires=(REWIND,)),
}
