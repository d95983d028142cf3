"""The pipeline: run the selected stages in order inside one locked run directory.

A stage is skipped when its completion marker exists (and every artifact it names is still there); an
unfinished stage continues from what it persisted. Before anything runs, the folder is checked to be
ltsearch's own (`ltsearch.guards`) and the config is compared with the run's own record (written once), so a
run directory never mixes the results of two configs.

However a session ends early, `failed.json` says where: an error, Ctrl-C or SIGTERM (raised as `Interrupted`,
whose one-line message says how to resume), or a full or read-only disk (a `StorageError` naming the file;
when the disk refuses the record too, the message says so). Rank 0 writes it, also after another rank was
killed (the launcher's SIGTERM is held off while it does); a session killed whole, which could write none,
gets its record from the session that takes over its lock.

In a run over several processes (`ltsearch.distributed`) every rank runs the stages; rank 0 alone holds the
lock and checks the record (an error there stops every rank), and the ranks meet at every stage boundary,
so that all of them see the same finished stages.

Callbacks (the experiment loggers of `cfg.logger`, then the caller's) hear of the run's start, every epoch
of every loop, every finished stage, the results and the end. The console gets the run directory, one line
per stage, the summary and a closing line (see `ltsearch.runtime` for what each verbosity shows).
"""

from __future__ import annotations

import errno
import logging
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import ltsearch.distributed as distributed
from ltsearch.config import RUNTIME_KEYS, Config, config_container, schema_defaults
from ltsearch.context import RunContext
from ltsearch.errors import ConfigError, Interrupted, ResumeError, StorageError
from ltsearch.guards import refuse_foreign, refuse_links
from ltsearch.loggers import build_loggers
from ltsearch.paths import DATA_RECORD, EVALUATE, FAILURE, MARKER, RECORD, RESULTS
from ltsearch.rundir import RunLock, clear_failure, config_diff, read_record, write_failure, write_record
from ltsearch.runtime import CLOSING, CONSOLE, Runtime, duration
from ltsearch.seeding import seed_everything
from ltsearch.stages import STAGES, Stage
from ltsearch.stages.evaluate import summary_table
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
                 callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run the selected stages of `cfg` in `run_dir`; return the results of the evaluate stage if it ran."""
    run_dir = Path(run_dir)
    lock = RunLock(run_dir)
    started = time.perf_counter()

    def enter() -> None:  # rank 0's part (all of it on one process)
        check_world(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        refuse_links(run_dir)
        refuse_foreign(run_dir)
        lock.acquire()
        remove_stale_temporaries(run_dir, own_files=(RECORD, FAILURE, DATA_RECORD), own_folders=tuple(STAGES))
        check_record(run_dir, cfg, overrides or [], label)
        if lock.taken_over and not (run_dir / FAILURE).exists():
            _record_killed_session(run_dir, cfg, lock.taken_over)

    try:
        distributed.on_main(enter)
        seed_everything(cfg.seed)
        hooks = (*build_loggers(cfg.logger), *callbacks)
        ctx = RunContext(cfg=cfg, run_dir=run_dir, runtime=Runtime.from_config(cfg.runtime), label=label,
                         stage_names=tuple(STAGES), callbacks=hooks)
        log.info("ltsearch: run directory %s", run_dir, extra=CONSOLE)
        for hook in hooks:
            hook.on_run_start(run_dir, config_container(cfg), label or cfg.pruner.name)
        try:
            results = _run_stages(ctx)
        except BaseException as exc:
            _end(hooks, exc)
            if not isinstance(exc, KeyboardInterrupt):  # an interruption says how to resume on its own
                log.info("ltsearch: stopped after %s; what finished is kept in %s (ltsearch resume %s continues)",
                         duration(time.perf_counter() - started), run_dir, shlex.quote(str(run_dir)),
                         extra=CLOSING)
            raise
        _end(hooks, None)
        if results:
            ctx.runtime.show(summary_table(results))
        log.info("%s", closing_line(cfg, run_dir, results, time.perf_counter() - started), extra=CLOSING)
        return results
    finally:
        lock.release()


def _run_stages(ctx: RunContext) -> dict[str, Any]:
    """The selected stages in order, then the results to the callbacks; a stop of any kind is recorded in
    failed.json first (see `_stopped`)."""
    run_dir, current, ran = ctx.run_dir, None, []
    with _sigterm_interrupts() as stopping:
        try:
            for name in [s for s in STAGES if s in ctx.cfg.stages]:
                current = name
                if _run_stage(ctx, name, STAGES[name]):
                    ran.append(name)
            results = ctx.stage_dir(EVALUATE)
            results = results.load_json(RESULTS) if results.done else {}
            for hook in ctx.callbacks if EVALUATE in ran else ():
                hook.on_results(results)
        except BaseException as exc:
            stopping()
            stop = _stopped(run_dir, current, exc)
            if stop is exc:
                raise
            raise stop from (None if isinstance(exc, KeyboardInterrupt) else exc)
    clear_failure(run_dir)
    return results


def _stopped(run_dir: Path, stage: str | None, exc: BaseException) -> BaseException:
    """Record a stop in failed.json and return what to raise: for Ctrl-C and SIGTERM an `Interrupted` whose
    one line says how to resume, for a full or read-only disk a `StorageError` naming the file, else the
    error itself. Where the record cannot be written, the line (or a warning) says so and names the stage."""
    resume = f"ltsearch resume {shlex.quote(str(run_dir))}"
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (see _sigterm_interrupts)
        term = isinstance(exc, Interrupted) and exc.exit_code == 143
        what, code = f"{'terminated (SIGTERM)' if term else 'interrupted (Ctrl-C)'} in stage {stage}", 143 if term else 130
        unrecorded = _record_failure(run_dir, stage, Interrupted(f"{what}; resume with: {resume}", code))
        return Interrupted(f"{what}{unrecorded}; resume with: {resume}", code)
    unrecorded = _record_failure(run_dir, stage, exc)
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return StorageError(f"{_storage_problem(exc)}; stage {stage} stopped{unrecorded} and continues where it "
                            f"stopped once that is fixed: {resume}")
    if unrecorded:
        log.warning("the run stopped in stage %s%s", stage, unrecorded)
    return exc


def _end(hooks: Sequence[Callback], error: BaseException | None) -> None:
    """Every hook's on_run_end, even when one of them fails (the first failure is raised afterwards)."""
    failure: BaseException | None = None
    for hook in hooks:
        try:
            hook.on_run_end(error)
        except Exception as exc:  # a logger that cannot close must not hide the others or the run's error
            log.warning("%s could not finish: %s: %s", type(hook).__name__, type(exc).__name__, exc)
            failure = failure or exc
    if failure is not None and error is None:
        raise failure


def closing_line(cfg: Config, run_dir: Path, results: dict[str, Any], seconds: float) -> str:
    if not results:
        return f"ltsearch: finished {', '.join(s for s in STAGES if s in cfg.stages)} in {duration(seconds)}: {run_dir}"
    density = results["density"]
    return (f"ltsearch: {results['label']} at sparsity {results['sparsity']:g}: test accuracy "
            f"{results['test_acc']:.4f}, {density['measured_kept']} of {density['prunable']} weights kept "
            f"({duration(seconds)}): {run_dir}")


# The filesystem's refusals: nothing wrong with the run, which continues once the storage takes writes again.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _storage_reason(exc: OSError) -> str:
    return {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the filesystem is read-only"}.get(exc.errno or 0, exc.strerror or str(exc))


def _storage_problem(exc: OSError) -> str:
    what = _storage_reason(exc)
    return f"cannot write {exc.filename or 'a file'}: {what}" if exc.filename else f"a write failed: {what}"


def _record_failure(run_dir: Path, stage: str | None, exc: BaseException) -> str:
    """failed.json, if the filesystem still takes it; else what to add to the line that reports the stop (a
    full disk may refuse the record too): where the record should be and why it is not."""
    try:
        write_failure(run_dir, stage, exc)
    except OSError as problem:
        return f" (no failure record: cannot write {run_dir / FAILURE}: {_storage_reason(problem)})"
    return ""


def _record_killed_session(run_dir: Path, cfg: Config, holder: str) -> None:
    """The failure record of a session that ended without writing one (killed: SIGKILL, out of memory, a
    lost node, every process of a distributed run stopped at once), written when the run is resumed: the
    stage it stopped in is the first selected one not done. This session replaces it when it ends."""
    stage = next((s for s in STAGES if s in cfg.stages and not (run_dir / s / MARKER).exists()), None)
    log.warning("the previous session of this run (%s) was killed in stage %s without a failure record; "
                "resuming", holder, stage)
    try:
        write_failure(run_dir, stage, f"Killed: the session of {holder} ended without releasing the run's lock or "
                                      f"writing this record (SIGKILL, out of memory, a lost node?)")
    except OSError as problem:
        log.warning("could not write %s (%s)", run_dir / FAILURE, _storage_reason(problem))


@contextmanager
def _sigterm_interrupts() -> Iterator[Callable[[], None]]:
    """SIGTERM (a scheduler's or a user's `kill`) ends the run like Ctrl-C: with a failure record and a
    resume hint. Only where nobody else handles SIGTERM (a launcher such as submitit may) and only in the
    main thread, which alone may install signal handlers.

    Yields `stopping()`, called once the run stops: from then on SIGTERM is ignored until the block ends, so
    that the failure record gets written. A launcher sends it to every process of a distributed run as soon
    as one of them dies, which is when the others record the error the dead peer caused."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield lambda: None
        return

    def terminate(signum: int, frame: object) -> None:
        raise Interrupted("SIGTERM", 143)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_stage(ctx: RunContext, name: str, stage: Stage) -> bool:
    """Run a stage unless it is complete; return whether it ran."""
    distributed.barrier()
    out = ctx.stage_dir(name)
    if out.done:
        out.check_complete()
        log.info("stage %s: already complete, skipped", name, extra=CONSOLE)
        return False
    for needed in stage.requires:
        if not ctx.stage_dir(needed).done:
            raise ConfigError(f"stage {name} needs the output of stage {needed}, which is not complete in "
                              f"{ctx.run_dir}; add {needed} to stages")
    log.info("stage %s: starting", name)
    out.start()
    extra = stage.run(ctx, out) or {}
    info = out.mark_done(**extra)
    summary = f" ({info['summary']})" if info.get("summary") else ""
    log.info("stage %s: done in %s%s", name, duration(info["wall_time"]), summary, extra=CONSOLE)
    for hook in ctx.callbacks:
        hook.on_stage_end(name, info)
    return True
