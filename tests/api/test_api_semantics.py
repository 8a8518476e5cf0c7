"""Idempotency, cancel, retry, backoff, priority, pagination and retention."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from taskfleet.errors import Conflict


async def test_idempotency_key_same_body_same_task_other_body_conflict(api, producer):
    first = await producer.submit("echo", {"data": 1}, idempotency_key="k-1")
    again = await producer.submit("echo", {"data": 1}, idempotency_key="k-1")
    assert again["task_id"] == first["task_id"]
    with pytest.raises(Conflict) as err:
        await producer.submit("echo", {"data": 2}, idempotency_key="k-1")
    assert err.value.code == "idempotency_conflict"
    async with httpx.AsyncClient(base_url=api.url) as http:
        body = {"workflow": "echo", "input": {"data": 3}}
        r1 = await http.post("/api/tasks", json=body, headers={"Idempotency-Key": "hdr"})
        r2 = await http.post("/api/tasks", json=body, headers={"Idempotency-Key": "hdr"})
        assert (r1.status_code, r2.status_code) == (201, 200)
        assert r1.json()["task_id"] == r2.json()["task_id"]
    page = await producer.list(limit=50)
    assert len(page["items"]) == 2


async def test_cancel_pending_is_immediate(producer, consumer):
    task = await producer.submit("echo", {})
    cancelled = await producer.cancel(task["task_id"])
    assert cancelled["status"] == "CANCELLED" and cancelled["finished_at"]
    assert await consumer.fetch(["echo"], wait_s=0) == []
    with pytest.raises(Conflict):
        await producer.cancel(task["task_id"])


async def test_cancel_running_is_seen_at_next_heartbeat(producer, consumer):
    task = await producer.submit("echo", {})
    [t] = await consumer.fetch(["echo"], wait_s=1)
    requested = await producer.cancel(task["task_id"])
    assert requested["status"] == "PROCESSING" and requested["cancel_requested"] is True
    beat = await consumer.heartbeat(t["task_id"], t["lease"]["id"])
    assert beat["cancel_requested"] is True
    final = await producer.get(task["task_id"])
    assert final["status"] == "CANCELLED" and final["history"][0]["outcome"] == "cancelled"
    with pytest.raises(Conflict):  # the holder's lease ended with the cancel
        await consumer.complete(t["task_id"], t["lease"]["id"], {})


async def test_retry_failed_task_resets_attempts_keeps_history(producer, consumer):
    task = await producer.submit("echo", {}, max_attempts=1)
    [t] = await consumer.fetch(["echo"], wait_s=1)
    await consumer.fail(t["task_id"], t["lease"]["id"], "boom", "x", False)
    retried = await producer.retry(task["task_id"])
    assert retried["status"] == "PENDING" and retried["attempts"] == 0 and retried["error"] is None
    [t2] = await consumer.fetch(["echo"], wait_s=1)
    await consumer.complete(t2["task_id"], t2["lease"]["id"], {"ok": True})
    done = await producer.get(task["task_id"])
    assert done["status"] == "COMPLETED" and len(done["history"]) == 2
    with pytest.raises(Conflict):
        await producer.retry(task["task_id"])


async def test_backoff_is_honoured(producer, consumer):
    task = await producer.submit("echo", {})
    [t] = await consumer.fetch(["echo"], wait_s=1)
    failed_at = time.time()
    await consumer.fail(t["task_id"], t["lease"]["id"], "later", "x", True, retry_after_s=1.5)
    assert await consumer.fetch(["echo"], wait_s=0) == []  # not before its not-before time
    [again] = await consumer.fetch(["echo"], wait_s=10)
    assert again["task_id"] == task["task_id"]
    assert time.time() - failed_at >= 1.5


async def test_computed_backoff_grows_between_retries(api_backoff_env, producer, consumer):
    await producer.submit("echo", {}, max_attempts=5)
    gaps = []
    for _ in range(3):
        [t] = await consumer.fetch(["echo"], wait_s=15)
        failed = time.time()
        await consumer.fail(t["task_id"], t["lease"]["id"], "x", "x", True)
        [t] = await consumer.fetch(["echo"], wait_s=15)
        gaps.append(time.time() - failed)
        await consumer.release(t["task_id"], t["lease"]["id"])
    # base 0.4 s, doubling, jitter in [0.5, 1]: at least 0.2, 0.4, 0.8 s
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8


@pytest.fixture
def api_backoff_env(api_env):
    api_env["TASKFLEET_BACKOFF_BASE_S"] = "0.4"
    return api_env


async def test_priority_then_age(producer, consumer):
    low = await producer.submit("echo", {"data": "low"}, priority=-1)
    mid1 = await producer.submit("echo", {"data": "mid1"})
    high = await producer.submit("echo", {"data": "high"}, priority=10)
    mid2 = await producer.submit("echo", {"data": "mid2"})
    got = await consumer.fetch(["echo"], limit=4, wait_s=0)
    assert [t["task_id"] for t in got] == [high["task_id"], mid1["task_id"], mid2["task_id"], low["task_id"]]


async def test_pagination_newest_first_with_filters(producer, consumer):
    ids = [(await producer.submit("echo", {"data": i}))["task_id"] for i in range(7)]
    [t] = await consumer.fetch(["echo"], wait_s=0)
    seen, cursor = [], None
    while True:
        page = await producer.list(limit=3, cursor=cursor)
        seen += [t["task_id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    processing = await producer.list(status="PROCESSING")
    assert [x["task_id"] for x in processing["items"]] == [t["task_id"]]
    assert (await producer.list(workflow="nothing"))["items"] == []

    # Every combination of filters, each a statement of its own, paged by its cursor.
    speech = [(await producer.submit("tts", {"text": f"line {i}"}))["task_id"] for i in range(3)]

    async def all_pages(**filters) -> list[str]:
        found, cursor = [], None
        while True:
            page = await producer.list(limit=2, cursor=cursor, **filters)
            found += [x["task_id"] for x in page["items"]]
            if (cursor := page["next_cursor"]) is None:
                return found

    pending_echo = [i for i in reversed(ids) if i != t["task_id"]]
    assert await all_pages(workflow="echo", status="PENDING") == pending_echo
    assert await all_pages(workflow="tts") == list(reversed(speech))
    assert await all_pages(status="PENDING") == list(reversed(speech)) + pending_echo
    assert await all_pages(workflow="echo", status="PROCESSING") == [t["task_id"]]
    assert await all_pages(workflow="tts", status="PROCESSING") == []


@pytest.fixture
def retention_env(api_env):
    api_env.update({"TASKFLEET_RETENTION_DAYS": str(1.5 / 86400), "TASKFLEET_RETENTION_INTERVAL_S": "0.3"})
    return api_env


async def test_retention_removes_only_old_finished_tasks(retention_env, producer, consumer):
    done = await producer.submit("echo", {})
    [t] = await consumer.fetch(["echo"], wait_s=1)
    await consumer.complete(t["task_id"], t["lease"]["id"], {})
    pending = await producer.submit("echo", {"data": "stays"})
    for _ in range(100):
        await asyncio.sleep(0.1)
        try:
            await producer.get(done["task_id"])
        except Exception as exc:
            assert getattr(exc, "code", "") == "not_found"
            break
    else:
        pytest.fail("finished task was not removed by retention")
    assert (await producer.get(pending["task_id"]))["status"] == "PENDING"
