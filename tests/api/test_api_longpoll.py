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
