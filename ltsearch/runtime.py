"""Where and how tensors are computed (device, precision, memory format, threads) and what the console shows
(progress bars, the log lines meant for it, tables), at the run's verbosity.

The console contract: run.log gets every log record; the console shows warnings and errors always, and an
INFO record only when it is marked for the console's verbosity (`extra=CONSOLE`: normal and verbose;
`extra=CLOSING`: also quiet), or every INFO record at verbose. A console whose reader went away (`ltsearch
run | head`) is silenced instead of failing the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text
from torch import nn

import ltsearch.distributed as distributed
from ltsearch.config import Precision, RuntimeConfig, Verbosity
from ltsearch.errors import ConfigError

log = logging.getLogger(__name__)

SHOW = "console"  # the LogRecord attribute that marks a record for the console, with the lowest verbosity
CONSOLE = {SHOW: Verbosity.normal}  # log.info(..., extra=CONSOLE): shown at normal and verbose
CLOSING = {SHOW: Verbosity.quiet}  # shown at every verbosity (the closing line of a run)
_RANK = {Verbosity.quiet: 0, Verbosity.normal: 1, Verbosity.verbose: 2}


def duration(seconds: float) -> str:
    """`8.2s`, `3m05s`, `2h14m`: readable at every scale."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def shows(verbosity: Verbosity, at: Verbosity) -> bool:
    """Whether something meant for verbosity `at` and above is shown at `verbosity`."""
    return _RANK[Verbosity(verbosity)] >= _RANK[Verbosity(at)]


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
    verbosity: Verbosity = Verbosity.normal

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
        progress = cfg.progress and cfg.verbosity != Verbosity.quiet and distributed.is_main()
        return cls(device, bf16, cfg.channels_last and device.type == "cuda", cfg.compile, progress,
                   cfg.checkpoint_every, cfg.keep_checkpoints, cfg.data_on_device, cfg.sync_batchnorm,
                   Verbosity(cfg.verbosity))

    def show(self, renderable: Any, at: Verbosity = Verbosity.normal) -> None:
        """Print a table or text on the console when the run's verbosity is `at` or above."""
        if shows(self.verbosity, at):
            write(renderable)

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


MIN_WIDTH = 100  # tables are laid out for this width; output that goes to a file or pipe gets it


def console() -> Console:
    """The global rich console; when it writes to a file or pipe (no terminal width to respect) and COLUMNS
    is not set, 100 columns wide instead of rich's 80."""
    from rich import get_console

    con = get_console()
    if not con.is_terminal and "COLUMNS" not in os.environ and con.width < MIN_WIDTH:
        con.width = MIN_WIDTH
    con.on_broken_pipe = _reader_gone  # type: ignore[method-assign]  # rich's own answer exits the process
    return con


def _reader_gone() -> None:
    console().quiet = True
    silence_stdout()


def silence_stdout() -> None:
    """The reader of stdout is gone (a closed pipe): send what is still to come to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file descriptor (captured by a test harness)
        pass
    finally:
        os.close(devnull)


def write(renderable: Any, **kwargs: Any) -> None:
    """Print on the global console; a closed pipe (`| head`) silences the console instead of raising."""
    try:
        console().print(renderable, **kwargs)
    except BrokenPipeError:
        _reader_gone()


class ConsoleHandler(logging.Handler):
    """The console's log handler (conf/hydra/job_logging): plain lines on the rich console that the progress
    bars use (so neither tears the other), one line per record, filtered by `verbosity` (see the module doc)."""

    STYLES = {logging.WARNING: ("warning: ", "yellow"), logging.ERROR: ("error: ", "bold red")}

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.verbosity = Verbosity.normal

    def wants(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or self.verbosity == Verbosity.verbose:
            return True
        at = getattr(record, SHOW, None)
        return at is not None and shows(self.verbosity, at)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.wants(record):
            return
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        level = max((lv for lv in self.STYLES if record.levelno >= lv), default=None)
        prefix, style = self.STYLES[level] if level is not None else ("", "")
        write(Text(prefix + message, style=style), soft_wrap=True)


def configure_console(verbosity: Verbosity) -> None:
    """Set the verbosity of the console handlers on the root logger (installed by Hydra's job logging)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ConsoleHandler):
            handler.verbosity = Verbosity(verbosity)


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Only warnings and errors from these libraries' loggers for the block: the INFO lines they write on
    their own (a font subsetter's tables, a database's migrations) would reach the console through the
    run's root logger."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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
