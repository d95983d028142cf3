"""The pipeline: run the selected stages in order inside one locked run directory.

A stage is skipped when its completion marker exists; an unfinished stage continues from what it
persisted. Before anything runs, the config is compared with the run's own record (written once), so a
run directory never mixes the results of two configs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltsearch.cache import ArtifactCache, default_cache_dir
from ltsearch.config import RUNTIME_KEYS, STAGE_ORDER, Config, When, config_container, schema_defaults
from ltsearch.data import Data, build_data
from ltsearch.errors import ConfigError, ResumeError
from ltsearch.models import build_model
from ltsearch.pruners import Pruner, build_pruner
from ltsearch.rundir import (
    RECORD,
    RunLock,
    StageDir,
    clear_failure,
    config_diff,
    read_record,
    write_failure,
    write_record,
)
from ltsearch.runtime import Runtime
from ltsearch.seeding import seed_everything
from ltsearch.storage import remove_stale_temporaries
from ltsearch.training.trainer import Callback, Trainer

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What every stage may use: the typed config, the run directory, the runtime, the data (loaded on
    first use), and builders for models and trainers."""

    cfg: Config
    run_dir: Path
    runtime: Runtime
    label: str = ""
    _pruner: Pruner | None = field(default=None, repr=False)

    @cached_property
    def data(self) -> Data:
        data = build_data(self.cfg.dataset)
        nbytes = sum(t.element_size() * t.numel() for t in (data.train_x, data.test_x))
        where = self.runtime.data_device(nbytes)
        if where.type == "cpu" and self.runtime.device.type == "cuda":
            log.info("dataset (%.2f GiB) kept in host memory: batches are gathered into pinned memory one step "
                     "ahead and copied asynchronously", nbytes / 2**30)
            return replace(data, host_prefetch=True)
        return data.to(where)

    @property
    def pruner(self) -> Pruner:
        if self._pruner is None:
            self._pruner = build_pruner(self.cfg.pruner)
        return self._pruner

    @property
    def pruning_epoch(self) -> int:
        """Epoch of the schedule at which the mask is found and from which the ticket is retrained."""
        return self.cfg.train.rewind_epoch if self.cfg.pruner.when == When.rewind else 0

    @property
    def target_density(self) -> float:
        return 1.0 if self.pruner.ignores_sparsity else self.cfg.density

    def stage(self, name: str) -> StageDir:
        return StageDir(self.run_dir / name)

    @cached_property
    def cache(self) -> ArtifactCache:
        root = Path(self.cfg.runtime.cache_dir).expanduser() if self.cfg.runtime.cache_dir else default_cache_dir()
        return ArtifactCache(root, enabled=self.cfg.runtime.cache)

    def upstream_spec(self) -> dict[str, Any]:
        """What determines dense training from w0: model, data, schedule, seed and the numerics it runs
        with (the key of cached pretraining and IMP levels)."""
        container = config_container(self.cfg)
        dataset = dict(container["dataset"])
        dataset.pop("download")
        if dataset["name"] != "imagefolder":  # a named dataset is the same data wherever it lies
            dataset.pop("root")
        else:
            dataset["root"] = str(Path(dataset["root"]).expanduser().resolve())
        rt = self.runtime
        numerics = {"device": rt.device.type, "bf16": rt.bf16, "channels_last": rt.channels_last,
                    "compile": rt.compile, "deterministic": self.cfg.runtime.deterministic,
                    "torch": torch.__version__}
        return {"model": container["model"], "dataset": dataset, "train": container["train"],
                "seed": self.cfg.seed, "numerics": numerics}

    def new_model(self, seed: int | None = None) -> nn.Module:
        """The network at initialisation (w0 of `seed`, default the run seed), on the device."""
        model = build_model(self.cfg.model, self.data.input_shape, self.data.num_classes,
                            self.cfg.seed if seed is None else seed)
        return self.runtime.place(model)

    def train(self, model: nn.Module, key: str, out: StageDir, start_epoch: int, end_epoch: int | None = None,
              callbacks: tuple[Callback, ...] = ()) -> list[dict[str, Any]]:
        """Train `model` in place over epochs [start, end) of `train`, resumable under `out`."""
        trainer = Trainer(model=model, data=self.data, cfg=self.cfg.train, runtime=self.runtime, out=out,
                          seed=self.cfg.seed, key=key, start_epoch=start_epoch, end_epoch=end_epoch,
                          callbacks=callbacks)
        return trainer.fit()


def _stage_modules() -> dict[str, Any]:
    from ltsearch.stages import evaluate, retrain, rewind, sanity, search

    return {"search": search, "rewind": rewind, "retrain": retrain, "sanity": sanity, "evaluate": evaluate}


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


def run_pipeline(cfg: Config, run_dir: Path, overrides: list[str] | None = None, label: str = "") -> dict[str, Any]:
    """Run the selected stages of `cfg` in `run_dir`; return the results of the evaluate stage if it ran."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        remove_stale_temporaries(run_dir)
        check_record(run_dir, cfg, overrides or [], label)
        seed_everything(cfg.seed)
        ctx = RunContext(cfg=cfg, run_dir=run_dir, runtime=Runtime.from_config(cfg.runtime), label=label)
        modules = _stage_modules()
        selected = [s.value for s in cfg.stages]
        unknown = [s for s in selected if s not in modules]
        if unknown:
            raise ConfigError(f"stage(s) {unknown} are not available in this version; choose from {list(modules)}")
        current = None
        try:
            for name in [s for s in STAGE_ORDER if s in selected]:
                current = name
                _run_stage(ctx, name, modules[name])
        except BaseException as exc:
            write_failure(run_dir, current, exc)
            raise
        clear_failure(run_dir)
        results = ctx.stage("evaluate")
        return results.load_json("results.json") if results.done else {}


def _run_stage(ctx: RunContext, name: str, module: Any) -> None:
    out = ctx.stage(name)
    if out.done:
        log.info("stage %s: already complete, skipped", name)
        return
    for needed in module.REQUIRES:
        if not ctx.stage(needed).done:
            raise ConfigError(f"stage {name} needs the output of stage {needed}, which is not complete in "
                              f"{ctx.run_dir}; add {needed} to stages")
    log.info("stage %s: starting", name)
    out.start()
    extra = module.run(ctx, out) or {}
    info = out.mark_done(**extra)
    log.info("stage %s: done in %.1fs", name, info["wall_time"])
