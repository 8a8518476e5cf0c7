"""The whole task lifecycle over HTTP against a real uvicorn, on both backends."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from taskfleet.client import ConsumerClient
from taskfleet.errors import LeaseLost, NotFound


async def test_create_fetch_heartbeat_complete(producer, consumer):
    task = await producer.submit("echo", {"data": {"n": 1}}, priority=5, metadata={"who": "test"})
    assert task["status"] == "PENDING"
    assert task["attempts"] == 0 and task["max_attempts"] == 3
    assert task["input"] == {"data": {"n": 1}, "sleep_s": 0.0, "fail": None}

    [leased] = await consumer.fetch(["echo"], wait_s=1)
    assert leased["task_id"] == task["task_id"] and leased["status"] == "PROCESSING"
    lease = leased["lease"]["id"]

    beat = await consumer.heartbeat(task["task_id"], lease, {"percent": 40, "message": "working"})
    assert beat["cancel_requested"] is False
    running = await producer.get(task["task_id"])
    assert running["progress"] == {"percent": 40, "message": "working"}
    assert running["consumer_id"] == "test-consumer"

    result = await consumer.complete(task["task_id"], lease, {"data": {"n": 1}})
    assert result["status"] == "COMPLETED"

    done = await producer.get(task["task_id"])
    assert done["status"] == "COMPLETED" and done["output"] == {"data": {"n": 1}}
    assert done["attempts"] == 1 and done["finished_at"] is not None
    assert done["metadata"] == {"who": "test"} and done["priority"] == 5
    [attempt] = done["history"]
    assert attempt["consumer_id"] == "test-consumer" and attempt["host"] == "test-host"
    assert attempt["outcome"] == "completed" and attempt["ended_at"] is not None


async def test_fail_retryable_then_fatal(producer, consumer):
    task = await producer.submit("echo", {}, max_attempts=2)
    [t] = await consumer.fetch(["echo"], wait_s=1)
    after = await consumer.fail(t["task_id"], t["lease"]["id"], "flaky", "try again", True, retry_after_s=0)
    assert after["status"] == "PENDING" and after["attempts"] == 1

    [t] = await consumer.fetch(["echo"], wait_s=2)
    after = await consumer.fail(t["task_id"], t["lease"]["id"], "flaky", "again", True, retry_after_s=0)
    assert after["status"] == "FAILED" and after["attempts"] == 2  # max_attempts reached

    final = await producer.get(task["task_id"])
    assert final["error"]["code"] == "flaky"
    assert [h["outcome"] for h in final["history"]] == ["failed", "failed"]


async def test_fatal_failure_is_not_retried(producer, consumer):
    task = await producer.submit("echo", {})
    [t] = await consumer.fetch(["echo"], wait_s=1)
    after = await consumer.fail(t["task_id"], t["lease"]["id"], "bad_input", "no", False)
    assert after["status"] == "FAILED" and after["attempts"] == 1
    assert await consumer.fetch(["echo"], wait_s=0) == []
    assert (await producer.get(task["task_id"]))["error"]["code"] == "bad_input"


async def test_release_does_not_count_the_attempt(producer, consumer):
    task = await producer.submit("echo", {})
    [t] = await consumer.fetch(["echo"], wait_s=1)
    released = await consumer.release(t["task_id"], t["lease"]["id"])
    assert released["status"] == "PENDING" and released["attempts"] == 0
    [again] = await consumer.fetch(["echo"], wait_s=1)
    assert again["task_id"] == task["task_id"] and again["lease"]["id"] != t["lease"]["id"]
    with pytest.raises(LeaseLost):
        await consumer.complete(t["task_id"], t["lease"]["id"], {})
    await consumer.complete(again["task_id"], again["lease"]["id"], {"ok": True})
    done = await producer.get(task["task_id"])
    assert done["attempts"] == 1
    assert [h["outcome"] for h in done["history"]] == ["released", "completed"]


async def test_fetch_filters_workflows_and_limit(producer, consumer, api):
    ids = [(await producer.submit("echo", {"data": i}))["task_id"] for i in range(5)]
    got = await consumer.fetch(["echo"], limit=3, wait_s=0)
    assert [t["task_id"] for t in got] == ids[:3]
    assert len({t["lease"]["id"] for t in got}) == 3
    rest = await consumer.fetch(None, limit=10, wait_s=0)
    assert [t["task_id"] for t in rest] == ids[3:]
    async with httpx.AsyncClient(base_url=api.url) as http:
        r = await http.get("/api/comm/task/fetch", params={"workflow": "no_such", "wait_s": 0})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_workflow"


async def test_unknown_task_is_404(producer, consumer):
    with pytest.raises(NotFound):
        await producer.get("tsk_missing")
    with pytest.raises(NotFound):
        await consumer.heartbeat("tsk_missing", "lease")


async def test_long_poll_returns_when_work_arrives(producer, api):
    # No timer could wake this fetch in time: the reaper's fallback check runs every 60 s here
    # and the poll waits 30 s, so getting the task proves the create signalled the waiter.
    async with ConsumerClient(api.url) as c:
        fetch = asyncio.create_task(c.fetch(["echo"], wait_s=30))
        await asyncio.sleep(0.3)
        assert not fetch.done()
        task = await producer.submit("echo", {"data": "wake"})
        got = await asyncio.wait_for(fetch, 20)
        assert [t["task_id"] for t in got] == [task["task_id"]]


@pytest.fixture
def api_env():
    return {"TASKFLEET_LEASE_S": "30", "TASKFLEET_REAP_INTERVAL_S": "60"}
