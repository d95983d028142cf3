"""ltsearch: config-driven lottery ticket search (Concrete Ticket Search and its baselines)."""

__version__ = "0.1.0"
