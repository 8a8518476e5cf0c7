"""The synchronous /process route and the per-workflow create-task aliases, with a real consumer loop."""

from __future__ import annotations

import asyncio

import httpx

from taskfleet.client import ConsumerClient


async def echo_worker(url: str, stop: asyncio.Event) -> None:
    """A minimal consumer: runs echo tasks as the contract says (the consumer package has the real one)."""
    async with ConsumerClient(url) as c:
        while not stop.is_set():
            for t in await c.fetch(["echo"], wait_s=0.5):
                fail = t["input"]["fail"]
                if fail == "fatal":
                    await c.fail(t["task_id"], t["lease"]["id"], "echo_fatal", "asked to fail", False)
                elif fail == "retryable":
                    await c.fail(t["task_id"], t["lease"]["id"], "echo_retryable", "asked to", True, retry_after_s=0)
                else:
                    await c.complete(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]})


async def test_process_returns_result_error_or_pending(api, producer):
    stop = asyncio.Event()
    worker = asyncio.create_task(echo_worker(api.url, stop))
    try:
        ok = await producer.process("echo", {"data": {"hello": 1}}, wait_s=20)
        assert ok.status_code == 200 and ok.json() == {"data": {"hello": 1}}

        fatal = await producer.process("echo", {"fail": "fatal"}, wait_s=20)
        assert fatal.status_code == 422
        assert fatal.json()["error"]["code"] == "echo_fatal" and fatal.json()["task_id"].startswith("tsk_")

        retried_out = await producer.process("echo", {"fail": "retryable"}, wait_s=20)
        assert retried_out.status_code == 502 and retried_out.json()["error"]["code"] == "echo_retryable"
        task = await producer.get(retried_out.json()["task_id"])
        assert task["attempts"] == 3
    finally:
        stop.set()
        await worker
    pending = await producer.process("echo", {"data": 2}, wait_s=0.3)
    assert pending.status_code == 202 and pending.json()["status"] == "PENDING"
    task = await producer.get(pending.json()["task_id"])
    assert task["priority"] > 1000  # ahead of anything a producer may ask for


async def test_create_task_alias_and_priority_of_sync_calls(api, producer, consumer):
    async with httpx.AsyncClient(base_url=api.url) as http:
        r = await http.post("/api/echo/create-task", json={"data": "alias"})
        assert r.status_code == 201 and r.json()["status"] == "PENDING"
        queued = r.json()["task_id"]
        sync = asyncio.create_task(http.post("/api/echo/process", params={"wait_s": 20}, json={"data": "sync"}, timeout=30))
        await asyncio.sleep(0.3)
        [first] = await consumer.fetch(["echo"], wait_s=1)
        assert first["input"]["data"] == "sync"  # the waiting caller's task jumps the queue
        await consumer.complete(first["task_id"], first["lease"]["id"], {"data": "sync"})
        assert (await sync).json() == {"data": "sync"}
    assert (await producer.get(queued))["input"]["data"] == "alias"
