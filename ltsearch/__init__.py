"""ltsearch: config-driven lottery ticket search (Concrete Ticket Search and its baselines).

The Python API (`ltsearch.api`) is exported here lazily: `find_ticket`, `apply_masks`, `load_ticket`,
`load_masks`, `save_ticket`, `read_ticket_file`, `sparsify`, `export_onnx`, `run`, `resume`, `compose_config`,
`Ticket`, `TicketFile`. Every submodule imports this package first, so it
imports nothing heavy itself; the API is imported on first use of one of these names.
"""

from __future__ import annotations

from typing import Any

from ltsearch.version import __version__

API = ("Ticket", "TicketFile", "apply_masks", "compose_config", "export_onnx", "find_ticket", "load_masks",
       "load_ticket", "read_ticket_file", "resume", "run", "save_ticket", "sparsify")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from ltsearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'ltsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
