"""Group commit without a timer: calls that arrive while one is being served go together next.

A caller that finds nothing in flight is served at once, in its own coroutine, so a lone call
waits for nobody and pays no hand-off. Calls that arrive meanwhile queue; when the call in
flight ends, one background task serves the queue in batches until it is empty. Each caller
gets its own item's result, or its own exception.

The task API's creates use it (one INSERT and one commit for many on Postgres), and so do the
consumer's completions (one request for many). The libraries found (coalescer, aiocoalesce)
only merge identical calls; this merges different ones.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The flush answers each item in order: its result, or the exception that item alone raised.
Flush = Callable[[list[T]], Awaitable[Sequence["R | Exception"]]]


class Coalescer(Generic[T, R]):
    """``max_items`` and, with a ``size`` function, ``max_size`` bound one flush; an item
    bigger than ``max_size`` still goes, alone."""

    def __init__(
        self,
        flush: Flush,
        *,
        max_items: int = 100,
        size: Callable[[T], int] | None = None,
        max_size: int | None = None,
    ) -> None:
        self._flush = flush
        self._max_items = max_items
        self._size = size
        self._max_size = max_size
        self._queued: deque[tuple[T, asyncio.Future]] = deque()
        self._busy = False
        self._drainer: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        if self._busy:
            future = asyncio.get_running_loop().create_future()
            self._queued.append((item, future))
            return await future
        self._busy = True
        try:
            [result] = await self._flush([item])
        finally:
            if self._queued:
                self._drainer = asyncio.create_task(self._drain())
            else:
                self._busy = False
        if isinstance(result, Exception):
            raise result
        return result

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch = self._next_batch()
                try:
                    results: Sequence[R | Exception] = await self._flush([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:  # the whole flush failed: every caller in it sees why
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results):
                    if future.done():  # its caller went away
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._busy = False

    def _next_batch(self) -> list[tuple[T, asyncio.Future]]:
        batch: list[tuple[T, asyncio.Future]] = []
        total = 0
        while self._queued and len(batch) < self._max_items:
            if self._size is not None and self._max_size is not None:
                size = self._size(self._queued[0][0])
                if batch and total + size > self._max_size:
                    break
                total += size
            batch.append(self._queued.popleft())
        return batch

    async def aclose(self) -> None:
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        while self._queued:
            _, future = self._queued.popleft()
            future.cancel()
