"""The coalescer behind the API's group commit: a lone call is served at once; calls that arrive
while one is in flight go together in the next flush; each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from taskfleet.coalesce import Coalescer


class Recorder:
    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    async def flush(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        if self.gate is not None and len(self.batches) == 1:
            await self.gate.wait()  # the first flush stays in flight until the test lets it go
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_a_lone_call_is_flushed_alone_in_the_callers_coroutine():
    rec = Recorder()
    co = Coalescer(rec.flush)
    assert await co.submit(4) == 40
    assert await co.submit(6) == 60
    assert rec.batches == [[4], [6]]
    assert co._drainer is None  # served in the caller's own coroutine: no background task


async def test_calls_during_a_flush_go_together_and_each_gets_its_own_answer():
    gate = asyncio.Event()
    rec = Recorder(gate)
    co = Coalescer(rec.flush, max_items=3)
    first = asyncio.create_task(co.submit(0))
    await asyncio.sleep(0)
    later = [asyncio.create_task(co.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(first, *later, return_exceptions=True)
    assert rec.batches == [[0], [1, 2, 3], [4, 5]]  # at most max_items per flush
    assert results[0] == 0 and results[2] == 20 and results[4] == 40
    assert [str(results[i]) for i in (1, 3, 5)] == ["odd 1", "odd 3", "odd 5"]
    assert await co.submit(8) == 80  # idle again: served directly
    assert rec.batches[-1] == [8]


async def test_a_failed_flush_reaches_every_caller_in_it_and_the_queue_goes_on():
    gate = asyncio.Event()
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            await gate.wait()
            raise ConnectionError("database went away")
        return items

    co = Coalescer(flush)
    first = asyncio.create_task(co.submit(1))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(co.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(ConnectionError):
        await first
    assert await asyncio.gather(*queued) == [2, 3]  # handed on, not stranded
    assert calls == [[1], [2, 3]]


async def test_max_size_splits_batches_and_an_oversized_item_goes_alone():
    gate = asyncio.Event()
    rec = Recorder(gate)
    co = Coalescer(rec.flush, max_items=10, size=lambda item: item, max_size=10)
    first = asyncio.create_task(co.submit(0))
    await asyncio.sleep(0)
    later = [asyncio.create_task(co.submit(i)) for i in (4, 6, 2, 20, 8)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *later, return_exceptions=True)
    assert rec.batches == [[0], [4, 6], [2], [20], [8]]  # 4+6 fits 10; 2+20 would not; 20 alone
