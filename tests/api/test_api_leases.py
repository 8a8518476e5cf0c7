"""Lease expiry, per-attempt timeouts and fencing of stale holders."""

from __future__ import annotations

import asyncio

import pytest

from taskfleet.client import ConsumerClient
from taskfleet.errors import LeaseLost


@pytest.fixture
def api_env():
    return {"TASKFLEET_LEASE_S": "1", "TASKFLEET_REAP_INTERVAL_S": "0.1"}


async def test_silent_consumer_loses_its_task_and_is_fenced(api, producer):
    task = await producer.submit("echo", {"data": "x"})
    async with ConsumerClient(api.url, consumer_id="stale") as stale, ConsumerClient(api.url, consumer_id="fresh") as fresh:
        [first] = await stale.fetch(["echo"], wait_s=1)
        # The stale consumer stops heartbeating; within a few lease lengths the task is re-leased.
        [second] = await fresh.fetch(["echo"], wait_s=10)
        assert second["task_id"] == task["task_id"]
        assert second["lease"]["id"] != first["lease"]["id"]
        assert second["attempts"] == 1  # the expired lease counted

        with pytest.raises(LeaseLost):
            await stale.complete(task["task_id"], first["lease"]["id"], {"data": "from the stale one"})
        with pytest.raises(LeaseLost):
            await stale.heartbeat(task["task_id"], first["lease"]["id"])
        still = await producer.get(task["task_id"])
        assert still["status"] == "PROCESSING" and still["output"] is None and still["consumer_id"] == "fresh"

        await fresh.complete(task["task_id"], second["lease"]["id"], {"data": "fresh"})
    done = await producer.get(task["task_id"])
    assert done["output"] == {"data": "fresh"} and done["attempts"] == 2
    assert [h["outcome"] for h in done["history"]] == ["lease_expired", "completed"]
    assert [h["consumer_id"] for h in done["history"]] == ["stale", "fresh"]


async def test_heartbeats_keep_the_lease(api, producer, consumer):
    task = await producer.submit("echo", {})
    [t] = await consumer.fetch(["echo"], wait_s=1)
    for _ in range(8):  # 2.4 s: well past the 1 s lease, heartbeating every 0.3 s
        await asyncio.sleep(0.3)
        await consumer.heartbeat(t["task_id"], t["lease"]["id"])
    await consumer.complete(t["task_id"], t["lease"]["id"], {"ok": 1})
    assert (await producer.get(task["task_id"]))["attempts"] == 1


async def test_expiry_past_max_attempts_fails_the_task(api, producer, consumer):
    task = await producer.submit("echo", {}, max_attempts=1)
    await consumer.fetch(["echo"], wait_s=1)
    for _ in range(100):
        current = await producer.get(task["task_id"])
        if current["status"] != "PROCESSING":
            break
        await asyncio.sleep(0.1)
    assert current["status"] == "FAILED" and current["error"]["code"] == "lease_expired"


async def test_timeout_s_ends_the_attempt_even_with_heartbeats(api, producer, consumer):
    task = await producer.submit("echo", {}, timeout_s=0.5, max_attempts=1)
    [t] = await consumer.fetch(["echo"], wait_s=1)
    with pytest.raises(LeaseLost):
        for _ in range(50):
            await consumer.heartbeat(t["task_id"], t["lease"]["id"])
            await asyncio.sleep(0.1)
    for _ in range(50):
        current = await producer.get(task["task_id"])
        if current["status"] == "FAILED":
            break
        await asyncio.sleep(0.1)
    assert current["status"] == "FAILED" and current["error"]["code"] == "timed_out"
    assert current["history"][0]["outcome"] == "timed_out"
