"""The pipeline: run the selected stages in order inside one locked run directory.

A stage is skipped when its completion marker exists; an unfinished stage continues from what it
persisted. Before anything runs, the config is compared with the run's own record (written once), so a
run directory never mixes the results of two configs.

Callbacks (the experiment loggers of `cfg.logger`, then the caller's) hear of the run's start, every epoch
of every loop, every finished stage, the results and the end. The console gets the run directory, one line
per stage and a closing line (see `ltsearch.runtime` for what each verbosity shows).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ltsearch.config import RUNTIME_KEYS, Config, config_container, schema_defaults
from ltsearch.context import RunContext
from ltsearch.errors import ConfigError, ResumeError
from ltsearch.loggers import build_loggers
from ltsearch.paths import EVALUATE, RECORD, RESULTS
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


def run_pipeline(cfg: Config, run_dir: Path, overrides: list[str] | None = None, label: str = "",
                 callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run the selected stages of `cfg` in `run_dir`; return the results of the evaluate stage if it ran."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with RunLock(run_dir):
        remove_stale_temporaries(run_dir)
        check_record(run_dir, cfg, overrides or [], label)
        seed_everything(cfg.seed)
        hooks = (*build_loggers(cfg.logger), *callbacks)
        ctx = RunContext(cfg=cfg, run_dir=run_dir, runtime=Runtime.from_config(cfg.runtime), label=label,
                         stage_names=tuple(STAGES), callbacks=hooks)
        log.info("ltsearch: run directory %s", run_dir, extra=CONSOLE)
        for hook in hooks:
            hook.on_run_start(run_dir, config_container(cfg), label or cfg.pruner.name)
        current, ran = None, []
        try:
            for name in [s for s in STAGES if s in cfg.stages]:
                current = name
                if _run_stage(ctx, name, STAGES[name]):
                    ran.append(name)
            results = ctx.stage_dir(EVALUATE)
            results = results.load_json(RESULTS) if results.done else {}
            for hook in hooks if EVALUATE in ran else ():
                hook.on_results(results)
        except BaseException as exc:
            write_failure(run_dir, current, exc)
            _end(hooks, exc)
            log.info("ltsearch: stopped in stage %s after %s; what finished is kept in %s (ltsearch resume %s "
                     "continues)", current, duration(time.perf_counter() - started), run_dir, run_dir,
                     extra=CLOSING)
            raise
        clear_failure(run_dir)
        _end(hooks, None)
        if results:
            ctx.runtime.show(summary_table(results))
        log.info("%s", closing_line(cfg, run_dir, results, time.perf_counter() - started), extra=CLOSING)
        return results


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


def _run_stage(ctx: RunContext, name: str, stage: Stage) -> bool:
    """Run a stage unless it is complete; return whether it ran."""
    out = ctx.stage_dir(name)
    if out.done:
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
