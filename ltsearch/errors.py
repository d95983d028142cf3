"""User-facing errors.

`LtsearchError` derives from Hydra's `CompactHydraException`: when it escapes a task, the command line prints
only its message, one line (no traceback, none of Hydra's framing: `ltsearch.refusals`), and exits 1, unless
HYDRA_FULL_ERROR=1. In a multirun the failing job is recorded and the other jobs still run. Everything the
user can cause (bad config, missing data, a resume that does not match) raises one of these; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

from hydra.errors import CompactHydraException


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's name when the
    message is empty: what a one-line error message quotes of a library's error."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class LtsearchError(CompactHydraException):
    """An error caused by input the user can fix; printed as one clear message."""


class ConfigError(LtsearchError):
    """The composed configuration is invalid (range, enum, unknown name, inconsistent options)."""


class DataError(LtsearchError):
    """A dataset is missing, unreadable or inconsistent."""


class ResumeError(LtsearchError):
    """A run directory cannot be (re-)entered: not a run, another config, locked by another process."""


class ArtifactError(LtsearchError):
    """An artifact on disk is corrupt, truncated, or not loadable safely."""


class UnsafeArtifactError(ArtifactError):
    """A tensor file that only loads with arbitrary unpickling (it names a Python callable or class): refused,
    never skipped silently, since it was not written by ltsearch and may have been planted to run code."""


class DivergenceError(LtsearchError):
    """A loss became NaN or Inf; the stage stops without writing its completion marker."""


class StorageError(LtsearchError):
    """The filesystem refused a write (disk full, quota, read-only, permission): nothing is wrong with the
    run, which continues where it stopped once the storage is writable again."""


class UnsafePathError(LtsearchError):
    """A file ltsearch would write, lock or remove is not its own to touch (a symbolic link, a folder of the
    user's): refused rather than followed."""


def full_error_requested() -> bool:
    """HYDRA_FULL_ERROR=1: the user wants Hydra's complete stack trace of every error, refusals included."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


class Refused(BaseException):
    """A refusal on its way to the command line, which prints `message` (one line) alone and exits 1.

    Raised where Hydra would otherwise frame an `LtsearchError` or its own config error with more lines (the
    overrides of the job, the HYDRA_FULL_ERROR hint; see `ltsearch.refusals`). A BaseException, so that
    neither Hydra's job runner nor its error reporter catches it on the way."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run after its failure record was written. A KeyboardInterrupt, so that no
    launcher mistakes it for one failed job and goes on with the next; the command line prints `message`."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
