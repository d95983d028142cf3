"""How `ltsearch run` reports a refusal: ltsearch's one sentence alone, without Hydra's framing around it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ltsearch.errors import LtsearchError, Refused, full_error_requested

T = TypeVar("T")


@contextmanager
def refusals_in_one_line() -> Iterator[None]:
    """Hydra reports an error that escapes its app in `hydra._internal.utils.run_and_report`: a compact one
    (an `LtsearchError`; Hydra's config errors: an unknown key or option, an override that does not parse) as
    its message, often several lines, then "Set the environment variable HYDRA_FULL_ERROR=1 for a complete
    stack trace."; anything else as a trimmed traceback and that hint. For the block, a compact error leaves
    the reporter as `Refused`, said in one line, which the command line prints alone with the exit status Hydra
    gives (1); every other error keeps Hydra's framing, where the trace helps; with HYDRA_FULL_ERROR=1 all of
    them do. (A refused single run raises `Refused` from the task, before Hydra adds its "Error executing job
    with overrides" line: see `ltsearch.app`.)"""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import CompactHydraException

    from ltsearch.compose import error_line

    original = hydra_utils.run_and_report

    def refusing(func: Callable[[], T]) -> T:
        try:
            return func()
        except CompactHydraException as exc:
            if full_error_requested():
                raise
            message = str(exc).strip() if isinstance(exc, LtsearchError) else error_line(exc)
            raise Refused(message) from exc

    hydra_utils.run_and_report = lambda func: original(lambda: refusing(func))
    try:
        yield
    finally:
        hydra_utils.run_and_report = original
