"""Batch routes: many creates in one transaction (all or none), many completions each fenced."""

from __future__ import annotations

import httpx
import pytest

from taskfleet.errors import Conflict, InvalidInput


async def test_batch_create_is_ordered_and_all_or_nothing(api, producer, consumer):
    tasks = await producer.submit_many([{"workflow": "echo", "input": {"data": i}} for i in range(50)])
    assert [t["input"]["data"] for t in tasks] == list(range(50))
    assert all(t["status"] == "PENDING" for t in tasks)
    got = await consumer.fetch(["echo"], limit=50, wait_s=0)
    assert [t["task_id"] for t in got] == [t["task_id"] for t in tasks]  # oldest first within a batch

    with pytest.raises(InvalidInput) as err:
        await producer.submit_many([{"workflow": "echo", "input": {}}, {"workflow": "echo", "input": {"fail": "x"}}])
    assert "tasks[1]" in err.value.message
    assert await consumer.fetch(["echo"], wait_s=0) == []  # the valid first item was not created either


async def test_batch_create_idempotency(producer):
    first = await producer.submit_many([{"workflow": "echo", "input": {"data": 1}, "idempotency_key": "b1"}])
    again = await producer.submit_many([
        {"workflow": "echo", "input": {"data": 1}, "idempotency_key": "b1"},
        {"workflow": "echo", "input": {"data": 2}, "idempotency_key": "b2"},
    ])
    assert again[0]["task_id"] == first[0]["task_id"] and again[1]["task_id"] != first[0]["task_id"]


async def test_complete_many_fences_each_item(api, producer, consumer):
    await producer.submit_many([{"workflow": "echo", "input": {"data": i}} for i in range(3)])
    leased = await consumer.fetch(["echo"], limit=3, wait_s=0)
    released = leased[1]
    await consumer.release(released["task_id"], released["lease"]["id"])
    results = await consumer.complete_many([(t["task_id"], t["lease"]["id"], {"n": i}) for i, t in enumerate(leased)])
    assert [r.get("status") for r in results] == ["COMPLETED", None, "COMPLETED"]
    assert results[1]["error"]["code"] == "lease_lost"
    assert (await producer.get(released["task_id"]))["status"] == "PENDING"
    assert (await producer.get(leased[2]["task_id"]))["output"] == {"n": 2}
    async with httpx.AsyncClient(base_url=api.url) as http:
        r = await http.post("/api/comm/tasks/complete", json={"items": []})
        assert r.status_code == 422


async def test_batch_create_with_a_conflicting_key_creates_nothing(producer, consumer):
    await producer.submit_many([{"workflow": "echo", "input": {"data": 1}, "idempotency_key": "taken"}])
    await consumer.fetch(["echo"], wait_s=0)  # lease the first task: the queue is empty again
    with pytest.raises(Conflict) as err:
        await producer.submit_many([
            {"workflow": "echo", "input": {"data": "new"}},
            {"workflow": "echo", "input": {"data": "other"}, "idempotency_key": "taken"},
        ])
    assert err.value.code == "idempotency_conflict"
    assert await consumer.fetch(["echo"], wait_s=0) == []  # the first item was rolled back too


async def test_complete_many_with_a_lease_listed_twice_ends_it_once(producer, consumer):
    await producer.submit("echo", {"data": 1})
    [t] = await consumer.fetch(["echo"], wait_s=0)
    first, again = await consumer.complete_many([(t["task_id"], t["lease"]["id"], {"n": 1}), (t["task_id"], t["lease"]["id"], {"n": 2})])
    assert first["status"] == "COMPLETED" and again["error"]["code"] == "lease_lost"
    done = await producer.get(t["task_id"])
    assert done["output"] == {"n": 1} and done["attempts"] == 1
    assert [h["outcome"] for h in done["history"]] == ["completed"]
