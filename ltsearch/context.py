"""What every pipeline stage may use: the run's typed config, its folder, the runtime, the data (loaded on
first use), the pruner, the artifact cache, and builders for models, training and pruning contexts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import ltsearch.distributed as distributed
from ltsearch.cache import ArtifactCache
from ltsearch.config import Config, When, config_container
from ltsearch.data import Data, ImageFolderData, build_data
from ltsearch.guards import check_data
from ltsearch.masking import Masks, attach_masks, load_plain_state_dict
from ltsearch.models import build_model
from ltsearch.models.resnet import stem_advice
from ltsearch.paths import artifact_cache_dir
from ltsearch.pruners import PruneContext, Pruner, build_pruner
from ltsearch.rundir import ArtifactDir
from ltsearch.runtime import Runtime
from ltsearch.training.loop import Callback, Record
from ltsearch.training.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """One run's shared state. `stage_names`: every pipeline stage in the order they run (from the stage
    registry); `callbacks` see every epoch of every loop the run trains or searches with."""

    cfg: Config
    run_dir: Path
    runtime: Runtime
    label: str = ""
    stage_names: tuple[str, ...] = ()
    callbacks: Sequence[Callback] = field(default_factory=tuple)

    @cached_property
    def data(self) -> Data | ImageFolderData:
        """The dataset, placed for this runtime; in a distributed run, with this rank's shard of each batch."""
        data = build_data(self.cfg.dataset, self.cfg.runtime)
        check_data(self.run_dir, self.cfg.dataset.root, data.identity)  # a resumed run reads the same data
        advice = stem_advice(self.cfg.model, data.input_shape)
        if advice:  # here: once per run, however often the network is built
            log.warning("%s", advice)
        if isinstance(data, ImageFolderData):  # read by DataLoader workers, batches pinned for CUDA
            return replace(data, shard=distributed.current_shard())
        nbytes = data.nbytes
        where = self.runtime.data_device(nbytes)
        if where.type == "cpu" and self.runtime.device.type == "cuda":
            log.info("dataset (%.2f GiB) kept in host memory: batches are gathered into pinned memory one step "
                     "ahead and copied asynchronously", nbytes / 2**30)
            data = replace(data, host_prefetch=True)
        else:
            data = data.to(where)
        return replace(data, shard=distributed.current_shard())

    @cached_property
    def pruner(self) -> Pruner:
        return build_pruner(self.cfg.pruner)

    @cached_property
    def cache(self) -> ArtifactCache:
        return ArtifactCache(artifact_cache_dir(self.cfg.runtime.cache_dir), enabled=self.cfg.runtime.cache)

    @property
    def pruning_epoch(self) -> int:
        """Epoch of the schedule at which the mask is found and from which the ticket is retrained."""
        return self.cfg.train.rewind_epoch if self.cfg.pruner.when == When.rewind else 0

    @property
    def target_density(self) -> float:
        return 1.0 if self.pruner.ignores_sparsity else self.cfg.density

    def stage_dir(self, name: str) -> ArtifactDir:
        """The folder of pipeline stage `name`."""
        return ArtifactDir(self.run_dir / name)

    def upstream_spec(self) -> dict[str, Any]:
        """What determines dense training from w0: model, data, schedule, seed and the numerics it runs
        with (the key of cached pretraining and IMP levels). The data is named by its content, not by where
        it lies: images changed in place are new data, the same data moved is not. On the CPU the number of
        intra-op threads is part of the numerics: it changes how reductions are split, and so the float
        results, so work done with 2 threads is never reused by a run with 1."""
        container = config_container(self.cfg)
        dataset = {k: v for k, v in container["dataset"].items() if k not in ("root", "download")}
        dataset["content"] = self.data.identity
        rt = self.runtime
        numerics = {"device": rt.device.type, "bf16": rt.bf16, "channels_last": rt.channels_last,
                    "compile": rt.compile, "deterministic": self.cfg.runtime.deterministic,
                    "torch": torch.__version__}
        if rt.device.type == "cpu":
            numerics["threads"] = torch.get_num_threads()
        return {"model": container["model"], "dataset": dataset, "train": container["train"],
                "seed": self.cfg.seed, "numerics": numerics}

    def new_model(self, seed: int | None = None) -> nn.Module:
        """The network at initialisation (w0 of `seed`, default the run seed), on the device."""
        model = build_model(self.cfg.model, self.data.input_shape, self.data.num_classes,
                            self.cfg.seed if seed is None else seed)
        return self.runtime.place(model)

    def model_with(self, weights: dict[str, Tensor], masks: Masks | None = None) -> nn.Module:
        """A network holding `weights` (a plain state dict), with `masks` attached when given."""
        model = self.new_model()
        load_plain_state_dict(model, weights)
        if masks is not None:
            attach_masks(model, masks)
        return model

    def load_network(self, stage: str, artifact: str) -> tuple[nn.Module, dict[str, Any]]:
        """The network saved as {"state_dict", "masks", ...} in `artifact` of a stage (the ticket, the
        retrained ticket), with its masks attached, and the artifact itself."""
        saved = self.stage_dir(stage).load_tensors(artifact)
        return self.model_with(saved["state_dict"], saved["masks"]), saved

    def train(self, model: nn.Module, stream: str, out: ArtifactDir, start_epoch: int,
              end_epoch: int | None = None) -> list[Record]:
        """Train `model` in place over epochs [start, end) of `train`, resumable under `out`."""
        trainer = Trainer(model=model, data=self.data, cfg=self.cfg.train, runtime=self.runtime, out=out,
                          seed=self.cfg.seed, stream=stream, start_epoch=start_epoch, end_epoch=end_epoch,
                          callbacks=self.callbacks)
        return trainer.fit()

    def prune_context(self, model: nn.Module, out: ArtifactDir) -> PruneContext:
        """What the pruner gets: the pruning-point network and this run's data, training, cache and hooks."""
        return PruneContext(model=model, data=self.data, cfg=self.cfg, runtime=self.runtime, out=out,
                            seed=self.cfg.seed, density=self.target_density, train=self.train, cache=self.cache,
                            upstream=self.upstream_spec(), callbacks=self.callbacks)
