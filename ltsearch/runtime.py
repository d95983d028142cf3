"""Where and how tensors are computed: device, precision, memory format, threads, progress display."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from ltsearch import distributed
from ltsearch.config import Precision, RuntimeConfig
from ltsearch.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    compile: bool
    progress: bool
    checkpoint_every: int
    keep_checkpoints: int
    data_on_device: str
    sync_batchnorm: bool = False

    @classmethod
    def from_config(cls, cfg: RuntimeConfig) -> Runtime:
        if cfg.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(cfg.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"runtime.device={cfg.device} but CUDA is not available here (use runtime.device=cpu)")
        if device.type == "cuda" and device.index is None and distributed.world_size() > 1:
            device = torch.device("cuda", torch.cuda.current_device())  # this process's GPU (its local rank)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        bf16 = cfg.precision == Precision.bf16 or (cfg.precision == Precision.auto and device.type == "cuda")
        if bf16 and device.type != "cuda":
            raise ConfigError("runtime.precision=bf16 is supported on CUDA only; use fp32 (or auto) on the CPU")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
            torch.backends.cuda.matmul.allow_tf32 = not cfg.deterministic
            torch.backends.cudnn.allow_tf32 = not cfg.deterministic
        # set both ways: a second run in the same process (a benchmark, a test) must not inherit the first's
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
        return cls(device, bf16, cfg.channels_last and device.type == "cuda", cfg.compile,
                   cfg.progress and distributed.is_main(), cfg.checkpoint_every, cfg.keep_checkpoints,
                   cfg.data_on_device, cfg.sync_batchnorm)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def place(self, model: nn.Module) -> nn.Module:
        """Move a model to the device (channels_last for 4-D convolution nets on CUDA)."""
        model = model.to(self.device)
        if self.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model = model.to(memory_format=torch.channels_last)
        return model

    def data_device(self, nbytes: int) -> torch.device:
        """Keep the dataset on the training device when it fits comfortably (or when told to)."""
        if self.data_on_device == "false" or self.device.type == "cpu":
            return torch.device("cpu")
        if self.data_on_device == "true":
            return self.device
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return self.device if nbytes < 0.3 * free else torch.device("cpu")
        return torch.device("cpu")


def console() -> Console:
    from rich import get_console

    return get_console()


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress]:
    """A rich progress bar on the global console (the one the log handler uses, so lines do not tear);
    live display only on a terminal."""
    con = console()
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=con, transient=True,
        disable=not (enabled and con.is_terminal),
    )
    with progress:
        yield progress
