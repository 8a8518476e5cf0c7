"""Long-poll wake-ups: a fetch whose consumer hung up claims nothing, and the wake it used goes
on to a consumer still waiting."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


async def park_raw_fetch(url: str, wait_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"GET /api/comm/task/fetch?workflow=echo&wait_s={wait_s}&consumer_id=hung-up HTTP/1.1\r\n"
        f"host: {parts.netloc}\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def test_a_fetch_whose_consumer_hung_up_claims_nothing(api, producer, consumer):
    _, writer = await park_raw_fetch(api.url, 20)
    await asyncio.sleep(0.3)  # parked
    writer.close()  # the consumer goes away while its fetch waits
    await writer.wait_closed()
    await asyncio.sleep(0.3)
    waiting = asyncio.create_task(consumer.fetch(["echo"], wait_s=10))
    await asyncio.sleep(0.3)

    task = await producer.submit("echo", {"data": "for someone still there"})
    [got] = await asyncio.wait_for(waiting, 5)  # the wake reached the live consumer
    assert got["task_id"] == task["task_id"]
    history = (await producer.get(task["task_id"]))["history"]
    assert [h["consumer_id"] for h in history] == ["test-consumer"]  # never leased to "hung-up"


async def test_wake_on_finish_ends_the_consumers_poll_when_one_of_its_leases_ends(api, producer, consumer):
    """A consumer that left a workflow out of its poll because its own tasks fill that
    workflow's model servers asks to be woken when one of its leases ends; a poll without the
    flag, or another consumer's poll, stays parked."""
    first, second = [await producer.submit("echo", {"data": str(i)}) for i in range(2)]
    leased = await consumer.fetch(["echo"], limit=2, wait_s=0)
    assert {t["task_id"] for t in leased} == {first["task_id"], second["task_id"]}
    leases = {t["task_id"]: t["lease"]["id"] for t in leased}

    flagged = asyncio.create_task(consumer.fetch(["echo"], wait_s=10, wake_on_finish=True))
    plain = asyncio.create_task(consumer.fetch(["echo"], wait_s=10))
    async with type(consumer)(api.url, consumer_id="someone-else") as other:
        others = asyncio.create_task(other.fetch(["echo"], wait_s=10, wake_on_finish=True))
        await asyncio.sleep(0.3)  # all three parked
        assert not (flagged.done() or plain.done() or others.done())

        await consumer.complete(first["task_id"], leases[first["task_id"]], {"ok": True})
        assert await asyncio.wait_for(flagged, 5) == []  # woken empty-handed, well before 10 s
        await asyncio.sleep(0.3)
        assert not plain.done() and not others.done()

        # The same over the riding path: a completion carried by the next fetch's request.
        flagged = asyncio.create_task(consumer.fetch(["echo"], wait_s=10, wake_on_finish=True))
        await asyncio.sleep(0.3)
        results, tasks = await asyncio.wait_for(
            consumer.complete_and_fetch([(second["task_id"], leases[second["task_id"]], {})], ["echo"], wait_s=0), 5
        )
        assert results[0]["status"] == "COMPLETED" and tasks == []
        assert await asyncio.wait_for(flagged, 5) == []
        await asyncio.sleep(0.3)
        assert not plain.done() and not others.done()  # another consumer's lease is not its business

        task = await producer.submit("echo", {"data": "for one of the parked"})
        done, parked = await asyncio.wait({plain, others}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        for p in parked:
            p.cancel()
        [got] = [t for d in done for t in d.result()]
        assert got["task_id"] == task["task_id"]


async def test_shutdown_answers_parked_fetches_instead_of_waiting_them_out(tmp_path):
    """uvicorn waits for every open response before it stops: on SIGTERM a parked fetch answers
    empty (its consumer polls again, elsewhere or here once the API is back) instead of holding
    the shutdown for the rest of its wait_s."""
    import signal

    from support import api_process
    from taskfleet.client import ConsumerClient

    api = api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path).start()
    try:
        async with ConsumerClient(api.url, consumer_id="parked") as consumer:
            parked = asyncio.create_task(consumer.fetch(["echo"], wait_s=60))
            await asyncio.sleep(0.5)
            assert not parked.done()
            returncode = await asyncio.to_thread(api.terminate, 20)
            assert returncode != -signal.SIGKILL, "the API had to be killed: a parked fetch held its shutdown"
            assert await asyncio.wait_for(parked, 5) == []
    finally:
        api.kill()
