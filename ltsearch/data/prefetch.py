"""Run a per-item function one item ahead on a worker thread, yielding results in order.

Used when the dataset stays in host memory while training runs on CUDA (it did not fit on the device):
gathering the next batch into pinned memory overlaps with the current training step, and the copy to the
device is asynchronous. The worker only runs `fn`; anything that draws random numbers stays with the
caller, so the batches and their augmentation do not depend on thread timing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetched(items: Sequence[T], fn: Callable[[T], R]) -> Iterator[R]:
    """`fn(item)` for every item in order, computing the next one while the caller uses the current one.

    An exception in `fn` is raised to the caller at the item that raised it. Closing the iterator early
    waits for the one pending call and stops the worker."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ltsearch-prefetch") as pool:
        pending: Future[R] = pool.submit(fn, items[0])
        for i in range(len(items)):
            result = pending.result()
            if i + 1 < len(items):
                pending = pool.submit(fn, items[i + 1])
            yield result
