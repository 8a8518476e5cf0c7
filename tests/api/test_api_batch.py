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


async def test_complete_many_with_fetch_answers_the_next_tasks_in_the_same_request(api, producer, consumer):
    await producer.submit_many([{"workflow": "echo", "input": {"data": i}} for i in range(3)])
    leased = await consumer.fetch(["echo"], limit=2, wait_s=0)
    first = leased[0]
    # The second lease is ended meanwhile: its item is fenced off, the rest still goes through.
    await consumer.release(leased[1]["task_id"], leased[1]["lease"]["id"])
    results, tasks = await consumer.complete_and_fetch(
        [(first["task_id"], first["lease"]["id"], {"n": 1}), (leased[1]["task_id"], leased[1]["lease"]["id"], {})],
        ["echo"], limit=5, wait_s=0,
    )
    assert results[0]["status"] == "COMPLETED" and results[1]["error"]["code"] == "lease_lost"
    # The fetch ran after the commit: the released task and the third are leased to this consumer.
    assert sorted(t["input"]["data"] for t in tasks) == [1, 2]
    assert all(t["status"] == "PROCESSING" and t["consumer_id"] == "test-consumer" for t in tasks)
    done = await producer.get(first["task_id"])
    assert done["status"] == "COMPLETED" and done["output"] == {"n": 1}
    # The new leases are fenced like any: the released one's old lease cannot complete it.
    again = await consumer.complete_many([(leased[1]["task_id"], leased[1]["lease"]["id"], {})])
    assert again[0]["error"]["code"] == "lease_lost"
    renewed = next(t for t in tasks if t["task_id"] == leased[1]["task_id"])
    [ok] = await consumer.complete_many([(renewed["task_id"], renewed["lease"]["id"], {})])
    assert ok["status"] == "COMPLETED"


async def test_complete_many_with_fetch_waits_for_a_task_and_is_committed_before(api, producer, consumer):
    import asyncio

    await producer.submit("echo", {"data": "a"})
    [t] = await consumer.fetch(["echo"], wait_s=0)
    call = asyncio.create_task(consumer.complete_and_fetch([(t["task_id"], t["lease"]["id"], {"n": 1})], ["echo"], wait_s=10))
    # While the request waits for the next task, its completion is already visible.
    for _ in range(100):
        if (await producer.get(t["task_id"]))["status"] == "COMPLETED":
            break
        await asyncio.sleep(0.05)
    assert (await producer.get(t["task_id"]))["status"] == "COMPLETED"
    assert not call.done()
    created = await producer.submit("echo", {"data": "b"})
    results, tasks = await asyncio.wait_for(call, 10)
    assert results == [{"task_id": t["task_id"], "status": "COMPLETED"}]
    assert [x["task_id"] for x in tasks] == [created["task_id"]]
    # Nothing arrives within wait_s: the results come back with no tasks.
    results, tasks = await consumer.complete_and_fetch([(tasks[0]["task_id"], tasks[0]["lease"]["id"], {})], ["echo"], wait_s=0.2)
    assert results[0]["status"] == "COMPLETED" and tasks == []


async def test_complete_many_with_a_bad_fetch_completes_nothing(api, producer, consumer):
    await producer.submit("echo", {"data": 1})
    [t] = await consumer.fetch(["echo"], wait_s=0)
    item = {"task_id": t["task_id"], "lease_id": t["lease"]["id"], "output": {}}
    async with httpx.AsyncClient(base_url=api.url) as http:
        for fetch, code in (({"workflow": ["nope"]}, "unknown_workflow"), ({"wait_s": 3600}, "validation_error"),
                            ({"limit": 0}, "validation_error"), ({"bogus": 1}, "validation_error")):
            r = await http.post("/api/comm/tasks/complete", json={"items": [item], "fetch": fetch})
            assert r.status_code == 422 and r.json()["error"]["code"] == code, (fetch, r.text)
    assert (await producer.get(t["task_id"]))["status"] == "PROCESSING"
