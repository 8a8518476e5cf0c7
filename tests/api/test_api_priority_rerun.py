"""POST /api/tasks/{id}/priority (a PENDING task's priority, which the claim order then
follows) and POST /api/tasks/{id}/rerun (a finished task copied into a new one, a pipeline as a
pipeline), on SQLite and Postgres."""

from __future__ import annotations

import httpx
import pytest

from taskfleet.errors import Conflict, NotFound
from test_api_pipelines import pipelines_dir, run_one, take  # noqa: F401 -- pipelines_dir: the fixture


@pytest.fixture
def api_env(pipelines_dir):  # noqa: F811
    return {"TASKFLEET_LEASE_S": "30", "TASKFLEET_REAP_INTERVAL_S": "0.2", "TASKFLEET_PIPELINES_DIR": str(pipelines_dir)}


async def test_a_raised_priority_is_claimed_first_and_a_lowered_one_last(api, producer, consumer):
    tasks = [await producer.submit("echo", {"data": i}) for i in range(4)]
    raised = await producer.set_priority(tasks[2]["task_id"], 50)
    assert raised["priority"] == 50 and raised["status"] == "PENDING"
    await producer.set_priority(tasks[0]["task_id"], -5)
    order = []
    while got := await consumer.fetch(["echo"], wait_s=0.2):
        order.append(got[0]["task_id"])
    assert order == [tasks[i]["task_id"] for i in (2, 1, 3, 0)]
    assert (await producer.get(tasks[2]["task_id"]))["priority"] == 50


async def test_priority_of_a_task_not_pending_is_a_409_and_bad_values_a_422(api, producer, consumer):
    task = await producer.submit("echo", {"data": 1})
    [leased] = await consumer.fetch(["echo"], wait_s=1)
    with pytest.raises(Conflict) as running:
        await producer.set_priority(task["task_id"], 9)
    assert running.value.code == "not_pending" and running.value.status == 409
    await consumer.complete(leased["task_id"], leased["lease"]["id"], {})
    with pytest.raises(Conflict):
        await producer.set_priority(task["task_id"], 9)
    pipeline = await producer.submit("branches", {})
    with pytest.raises(Conflict) as piped:  # a pipeline task is PROCESSING from its create
        await producer.set_priority(pipeline["task_id"], 9)
    assert piped.value.code == "not_pending"
    with pytest.raises(NotFound):
        await producer.set_priority("tsk_missing", 1)
    pending = await producer.submit("echo", {"data": 2})
    async with httpx.AsyncClient(base_url=api.url) as http:
        for body in ({"priority": 1001}, {"priority": "high"}, {}, {"priority": 1, "extra": 1}):
            response = await http.post(f"/api/tasks/{pending['task_id']}/priority", json=body)
            assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error"
    assert (await producer.get(pending["task_id"]))["priority"] == 0


async def test_a_finished_task_reruns_as_a_new_task_with_its_settings(api, producer, consumer):
    original = await producer.submit(
        "echo", {"data": "again"}, priority=7, max_attempts=2, timeout_s=45, metadata={"who": "me"},
        expires_in_s=600, idempotency_key="first-key",
    )
    [leased] = await consumer.fetch(["echo"], wait_s=1)
    await consumer.fail(leased["task_id"], leased["lease"]["id"], "bad", "no", False)

    rerun = await producer.rerun(original["task_id"])
    assert rerun["task_id"] != original["task_id"] and rerun["rerun_of"] == original["task_id"]
    assert rerun["status"] == "PENDING" and rerun["attempts"] == 0 and rerun["error"] is None
    for name in ("workflow", "input", "priority", "max_attempts", "timeout_s", "metadata", "webhook_url"):
        assert rerun[name] == original[name], name
    assert rerun["expires_at"] > rerun["created_at"]  # the TTL again, from the rerun
    # The original is untouched, and the copy runs like any task.
    assert (await producer.get(original["task_id"]))["status"] == "FAILED"
    [leased] = await consumer.fetch(["echo"], wait_s=1)
    assert leased["task_id"] == rerun["task_id"]
    await consumer.complete(leased["task_id"], leased["lease"]["id"], {"data": "again"})
    # A finished rerun reruns too; each names the task it copied.
    second = await producer.rerun(rerun["task_id"])
    assert second["rerun_of"] == rerun["task_id"]


async def test_rerun_with_an_idempotency_key_creates_once(api, producer, consumer):
    task = await producer.submit("echo", {"data": 1})
    [leased] = await consumer.fetch(["echo"], wait_s=1)
    await consumer.complete(leased["task_id"], leased["lease"]["id"], {})
    async with httpx.AsyncClient(base_url=api.url) as http:
        first = await http.post(f"/api/tasks/{task['task_id']}/rerun", headers={"Idempotency-Key": "rerun-1"})
        again = await http.post(f"/api/tasks/{task['task_id']}/rerun", headers={"Idempotency-Key": "rerun-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["task_id"] == again.json()["task_id"]
    assert len((await producer.list())["items"]) == 2


async def test_rerun_of_a_task_not_finished_is_a_409(api, producer, consumer):
    pending = await producer.submit("echo", {"data": 1})
    with pytest.raises(Conflict) as refused:
        await producer.rerun(pending["task_id"])
    assert refused.value.code == "not_finished" and refused.value.status == 409
    await consumer.fetch(["echo"], wait_s=1)
    with pytest.raises(Conflict):  # PROCESSING
        await producer.rerun(pending["task_id"])
    with pytest.raises(NotFound):
        await producer.rerun("tsk_missing")


async def test_a_pipeline_reruns_as_a_pipeline(api, producer, consumer):
    created = await producer.submit("chain", {"words": ["x"], "n": 3})
    await run_one(consumer, "first")
    # A stage task is rerun through its pipeline, not on its own.
    [each] = await take(consumer, 1)
    await consumer.complete(each["task_id"], each["lease"]["id"], {"data": each["input"]["data"]})
    with pytest.raises(Conflict) as staged:
        await producer.rerun(each["task_id"])
    assert staged.value.code == "invalid_state"
    await run_one(consumer, "last")
    done = await producer.wait(created["task_id"], timeout=10)
    assert done["status"] == "COMPLETED"

    rerun = await producer.rerun(created["task_id"])
    assert rerun["rerun_of"] == created["task_id"] and rerun["status"] == "PROCESSING"
    assert rerun["input"] == created["input"] and rerun["parent_id"] is None
    first = await run_one(consumer, "first")
    assert first["parent_id"] == rerun["task_id"]  # its own, new stage tasks
    [each] = await take(consumer, 1)
    await consumer.complete(each["task_id"], each["lease"]["id"], {"data": each["input"]["data"]})
    await run_one(consumer, "last")
    again = await producer.wait(rerun["task_id"], timeout=10)
    assert again["status"] == "COMPLETED" and again["output"] == done["output"]
