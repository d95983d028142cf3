"""The handler of a run's log file (`run.log`), named in conf/hydra/job_logging/rich.yaml.

Two things logging.FileHandler does not do:
- It never writes through a symbolic link: a `run.log` that is a link (planted in a shared run folder) would
  have every session append to the link's target. The file is opened with O_NOFOLLOW; a link is left alone,
  nothing is written, and the pipeline refuses the run folder with a message (`guards.refuse_links`).
- One record is one line: control characters in a message (a line break in a path or a value) are written
  escaped, so no string can forge a log line. Tracebacks keep their lines (they come from the code).

A write that fails (disk full) is dropped quietly: the failure surfaces as the run's own one-line error, not
as logging's multi-line "--- Logging error ---" report.
"""

from __future__ import annotations

import logging
import os
import re
from typing import IO

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def has_control(text: str) -> bool:
    """Whether `text` holds a control character (a line break, a tab, an escape, ...)."""
    return _CONTROL.search(text) is not None


def one_line(text: str) -> str:
    """`text` with every control character (line breaks included) written as an escape, e.g. \\n."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class RunLogHandler(logging.FileHandler):
    """Appends to the run's log file, never through a link, one line per record."""

    refused: str = ""  # why nothing is written (the file is a link), for the pipeline's message

    def _open(self) -> IO[str]:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.baseFilename, flags, 0o644)
        except OSError:
            if not os.path.islink(self.baseFilename):
                raise
            self.refused = f"{self.baseFilename} is a symbolic link"
            return open(os.devnull, "a", encoding=self.encoding)  # noqa: SIM115 - the handler closes it
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _CONTROL.search(message):
            record = logging.makeLogRecord({**record.__dict__, "msg": one_line(message), "args": None})
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """A failed write (disk full, read-only) is not reported here; the run reports it once."""
