"""Dynamic micro-batching: gather items into batches for one forward pass each.

A batch is released as soon as it is full, when its oldest item has waited ``max_wait``
seconds, or at once when nothing else is on its way (``more_coming()`` is false and nothing is
queued) — so a lone image never waits for company that is not coming.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from visionq import metrics
from visionq.waiting import wait_event

T = TypeVar("T")


class BatcherClosed(Exception):
    """``next_batch`` after ``close`` once every queued item was handed out."""


class MicroBatcher(Generic[T]):
    def __init__(self, *, max_batch: int, max_wait: float, more_coming: Callable[[], bool] = lambda: False) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._more_coming = more_coming
        self._items: deque[tuple[float, T]] = deque()
        self._changed = asyncio.Event()
        self._closed = False

    def put(self, item: T) -> None:
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        self._items.append((time.monotonic(), item))
        self._changed.set()

    def poke(self) -> None:
        """Tell a waiting ``next_batch`` to look again (``more_coming`` may have changed)."""
        self._changed.set()

    def close(self) -> None:
        """Take no more; what is queued is still handed out, without waiting."""
        self._closed = True
        self._changed.set()

    def __len__(self) -> int:
        return len(self._items)

    async def next_batch(self) -> list[T]:
        """The next batch, in arrival order; waits for the first item, then by the rules above."""
        while True:
            if self._items:
                oldest = self._items[0][0]
                full = len(self._items) >= self.max_batch
                waited = time.monotonic() - oldest >= self.max_wait
                if full or waited or self._closed or not self._more_coming():
                    taken = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
                    metrics.WORKER.batch_formed([entered for entered, _ in taken], time.monotonic())
                    return [item for _, item in taken]
                timeout: float | None = max(0.0, oldest + self.max_wait - time.monotonic())
            elif self._closed:
                raise BatcherClosed("the batcher is closed and empty")
            else:
                timeout = None
            self._changed.clear()
            await wait_event(self._changed, timeout)
