"""The one resumable epoch loop, shared by weight training (`Trainer`) and the CTS mask search.

A loop runs epochs [first, end) of an `EpochTask` inside an artifact folder: it continues from the newest
good checkpoint (the task's state, the history so far and the folder's clock), shows a progress bar, hands
every epoch's record to the callbacks, checkpoints, and keeps `metrics.json` (one record per epoch) in step
with the checkpoints. What differs between the tasks lives in the task (its state, its epoch, its log line)
or in callbacks, not in `if`s here.

Checkpoints are flat dicts: {"epoch", "history", "clock", **task.state_dict()}.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import ltsearch.distributed as distributed
from ltsearch.paths import CHECKPOINTS, METRICS
from ltsearch.rundir import ArtifactDir
from ltsearch.runtime import CONSOLE, progress_bar
from ltsearch.storage import save_json
from ltsearch.training.checkpoints import Checkpoints

log = logging.getLogger(__name__)
Record = dict[str, Any]


class EpochTask(Protocol):
    """What a loop runs: one epoch at a time, with a state that a checkpoint can carry."""

    def run_epoch(self, epoch: int, advance: Callable[[], None]) -> Record:
        """Run 0-based `epoch` (calling `advance` after every step); return its record."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def summary(self, record: Record) -> str:
        """A short text for the progress bar."""

    def log_epoch(self, record: Record, end_epoch: int) -> None: ...


class Callback:
    """Hooks into a run (experiment loggers, user code): every epoch of every loop the run trains or searches
    with (`loop.out.label` names it: `search/pretrain`, `search/cts`, `retrain`, `sanity/shuffle`, ...),
    every finished stage, the final results. Override what you need; the pipeline calls the run-level hooks,
    a loop calls `on_epoch_end` (so a pruner used on its own, through the Python API, calls that one only)."""

    def on_run_start(self, run_dir: Path, config: dict[str, Any], label: str) -> None:
        """Before the first stage; `config` is the resolved config as a plain dict."""

    def on_epoch_end(self, loop: EpochLoop, record: Record) -> None:
        """After every epoch of a loop, with that epoch's record (also written to its metrics.json)."""

    def on_stage_end(self, stage: str, info: dict[str, Any]) -> None:
        """After a stage finished (`info`: its completion marker: wall time, compute, ...); not called for
        stages skipped because an earlier session finished them."""

    def on_results(self, results: dict[str, Any]) -> None:
        """The evaluate stage's results.json, when that stage ran in this session."""

    def on_run_end(self, error: BaseException | None) -> None:
        """Last, also when a stage failed (`error`); close files and connections here."""


class EpochLoop:
    """Epochs [start_epoch, end_epoch) of a task under `out`, resumable at every checkpoint."""

    def __init__(self, out: ArtifactDir, *, start_epoch: int, end_epoch: int, steps_per_epoch: int,
                 description: str, progress: bool, keep_checkpoints: int, checkpoint_every: int = 1,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.out = out
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.steps_per_epoch = steps_per_epoch
        self.description = description
        self.progress = progress
        self.checkpoint_every = checkpoint_every
        self.callbacks = list(callbacks)
        self.checkpoints = Checkpoints(out.path / CHECKPOINTS, keep=keep_checkpoints)
        self.history: list[Record] = []

    def restore(self, task: EpochTask) -> int:
        """Load the newest good checkpoint into the task; return the epoch to continue from (every rank of a
        distributed run reads the same files: none is written while they read)."""
        distributed.barrier()
        state = self.checkpoints.latest()
        if state is None:
            return self.start_epoch
        task.load_state_dict(state)
        self.history = list(state["history"])
        if "clock" in state:
            self.out.restore_clock(state["clock"])
        log.info("%s: resuming at epoch %d/%d from a checkpoint", self.out.label, state["epoch"], self.end_epoch,
                 extra=CONSOLE)
        return int(state["epoch"])

    def run(self, task: EpochTask) -> list[Record]:
        """Run the remaining epochs; return the history of every epoch (also those of earlier sessions)."""
        first = self.restore(task)
        if first < self.end_epoch:
            with progress_bar(self.progress) as bar:
                progress = bar.add_task(self.description, total=(self.end_epoch - first) * self.steps_per_epoch,
                                        info="")
                for epoch in range(first, self.end_epoch):
                    record = task.run_epoch(epoch, lambda: bar.advance(progress))
                    self.history.append(record)
                    bar.update(progress, info=task.summary(record))
                    task.log_epoch(record, self.end_epoch)
                    for callback in self.callbacks:
                        callback.on_epoch_end(self, record)
                    last = epoch + 1 == self.end_epoch
                    if last or (epoch + 1 - self.start_epoch) % self.checkpoint_every == 0:
                        self.checkpoint(task, epoch + 1)
        # Once more from the (checksummed) history, recorded in the folder's manifest so that its completion
        # marker covers it (also when a session resumed after the last checkpoint).
        self.out.manifest[METRICS] = distributed.on_main(lambda: save_json(self.out.path / METRICS, self.history))
        return self.history

    def checkpoint(self, task: EpochTask, next_epoch: int) -> None:
        self.checkpoints.save(next_epoch, {"epoch": next_epoch, "history": self.history,
                                           "clock": self.out.clock_state(), **task.state_dict()})
        save_json(self.out.path / METRICS, self.history)
        self.out.checkpoint_clock()
