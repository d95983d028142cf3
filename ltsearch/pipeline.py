"""The pipeline: run the selected stages in order inside one locked run directory.

A stage is skipped when its completion marker exists; an unfinished stage continues from what it
persisted. Before anything runs, the config is compared with the run's own record (written once), so a
run directory never mixes the results of two configs.

In a run over several processes (`ltsearch.distributed`) every rank runs the stages; rank 0 alone holds the
lock and checks the record (an error there stops every rank), and the ranks meet at every stage boundary,
so that all of them see the same finished stages.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ltsearch import distributed
from ltsearch.config import RUNTIME_KEYS, Config, config_container, schema_defaults
from ltsearch.context import RunContext
from ltsearch.errors import ConfigError, ResumeError
from ltsearch.paths import EVALUATE, RECORD, RESULTS
from ltsearch.rundir import RunLock, clear_failure, config_diff, read_record, write_failure, write_record
from ltsearch.runtime import Runtime
from ltsearch.seeding import seed_everything
from ltsearch.stages import STAGES, Stage
from ltsearch.storage import remove_stale_temporaries
from ltsearch.training.loop import Callback

log = logging.getLogger(__name__)


def check_record(run_dir: Path, cfg: Config, overrides: list[str], label: str) -> None:
    """Write the run's record on first entry; on re-entry refuse a different config, key by key."""
    current = config_container(cfg)
    if not (run_dir / RECORD).exists():
        write_record(run_dir, current, overrides, label)
        return
    recorded = read_record(run_dir)["config"]
    diff = config_diff(recorded, current, ignore=RUNTIME_KEYS, defaults=schema_defaults(cfg))
    if diff:
        shown = [d.strip() for d in diff[:6]] + ([f"{len(diff) - 6} more"] if len(diff) > 6 else [])
        raise ResumeError(
            f"{run_dir} holds a run with a different config ({'; '.join(shown)}); refusing "
            f"to mix results: use a new run directory, or resume with the recorded config (ltsearch resume "
            f"{run_dir})")


def check_world(cfg: Config) -> None:
    """A global batch of training or of the CTS search is split evenly over the processes of a distributed run
    (SNIP's and GraSP's scoring batches are not split: every rank scores the same batch)."""
    world = distributed.world_size()
    batches = {"train.batch_size": cfg.train.batch_size}
    if cfg.pruner.name == "cts" and cfg.pruner.batch_size:
        batches["pruner.batch_size"] = cfg.pruner.batch_size
    for key, size in batches.items():
        if size % world:
            raise ConfigError(f"{key}={size} is the global batch, split over {world} processes: it must be a "
                              f"multiple of {world} (e.g. {size - size % world or world})")
    if world > 1 and cfg.runtime.sync_batchnorm and (cfg.runtime.device == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("runtime.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm); on the CPU each "
                          "process normalises with its own rows of the global batch")


def run_pipeline(cfg: Config, run_dir: Path, overrides: list[str] | None = None, label: str = "",
                 callbacks: tuple[Callback, ...] = ()) -> dict[str, Any]:
    """Run the selected stages of `cfg` in `run_dir`; return the results of the evaluate stage if it ran."""
    run_dir = Path(run_dir)
    lock = RunLock(run_dir)

    def enter() -> None:  # rank 0's part (all of it on one process)
        check_world(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        remove_stale_temporaries(run_dir)
        check_record(run_dir, cfg, overrides or [], label)

    try:
        distributed.on_main(enter)
        seed_everything(cfg.seed)
        ctx = RunContext(cfg=cfg, run_dir=run_dir, runtime=Runtime.from_config(cfg.runtime), label=label,
                         stage_names=tuple(STAGES), callbacks=callbacks)
        current = None
        try:
            for name in [s for s in STAGES if s in cfg.stages]:
                current = name
                _run_stage(ctx, name, STAGES[name])
        except BaseException as exc:
            write_failure(run_dir, current, exc)
            raise
        clear_failure(run_dir)
        results = ctx.stage_dir(EVALUATE)
        return results.load_json(RESULTS) if results.done else {}
    finally:
        lock.release()


def _run_stage(ctx: RunContext, name: str, stage: Stage) -> None:
    distributed.barrier()
    out = ctx.stage_dir(name)
    if out.done:
        log.info("stage %s: already complete, skipped", name)
        return
    for needed in stage.requires:
        if not ctx.stage_dir(needed).done:
            raise ConfigError(f"stage {name} needs the output of stage {needed}, which is not complete in "
                              f"{ctx.run_dir}; add {needed} to stages")
    log.info("stage %s: starting", name)
    out.start()
    extra = stage.run(ctx, out) or {}
    info = out.mark_done(**extra)
    log.info("stage %s: done in %.1fs", name, info["wall_time"])
