"""ltsearch's version, in a leaf module: run records and cache keys carry it, and the package `__init__`
re-exports it without importing anything heavier."""

__version__ = "0.1.0"
