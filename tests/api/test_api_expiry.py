"""Pending TTL: a task still PENDING past its expires_in_s (or TASKFLEET_PENDING_TTL_S) ends
FAILED `expired` by the API's own timer, on SQLite and Postgres, with its webhook, its event
and its metric; a claimed task runs on; several Postgres replicas end each task once."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from support import api_process, postgres_database
from taskfleet.client import ProducerClient
from test_api_metrics import samples
from test_api_pipelines import pipelines_dir  # noqa: F401 -- the fixture, for the pipeline case
from webhook_receiver import Receiver, wait_for, webhook_api_env


@pytest.fixture
def api_env(request, pipelines_dir):  # noqa: F811
    env = {**webhook_api_env("ttl-secret"), "TASKFLEET_LEASE_S": "30", "TASKFLEET_PIPELINES_DIR": str(pipelines_dir)}
    return {**env, **getattr(request, "param", {})}


async def wait_status(producer: ProducerClient, task_id: str, status: str, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while (task := await producer.get(task_id))["status"] != status:
        assert time.monotonic() < deadline, f"{task_id} still {task['status']}"
        await asyncio.sleep(0.1)
    return task


async def test_a_task_still_pending_past_expires_in_s_ends_failed_expired(api, producer, consumer):
    with Receiver() as receiver:
        doomed = await producer.submit("echo", {"data": "late"}, expires_in_s=0.6, webhook_url=receiver.url)
        kept = await producer.submit("echo", {"data": "no ttl"})
        assert doomed["expires_at"] is not None and kept["expires_at"] is None
        events = asyncio.create_task(_collect(producer, doomed["task_id"]))

        ended = await wait_status(producer, doomed["task_id"], "FAILED")
        assert ended["error"]["code"] == "expired" and ended["attempts"] == 0 and ended["history"] == []
        assert ended["finished_at"] is not None and ended["started_at"] is None
        # It never runs: the next fetch gets the other task only.
        got = await consumer.fetch(["echo"], limit=5, wait_s=0.5)
        assert [t["task_id"] for t in got] == [kept["task_id"]]
        # Like any terminal state: its webhook, the end of its event stream, the metric.
        await wait_for(lambda: len(receiver.received) >= 1)
        hook = json.loads(receiver.received[0][1])
        assert hook["task_id"] == doomed["task_id"] and hook["error"]["code"] == "expired"
        seen = await asyncio.wait_for(events, 10)
        assert seen[-1]["status"] == "FAILED" and seen[-1]["error"]["code"] == "expired"
        async with httpx.AsyncClient(base_url=api.url) as http:
            m = samples((await http.get("/metrics")).text)
        assert m[("taskfleet_tasks_expired_total", (("workflow", "echo"),))] == 1


async def _collect(producer: ProducerClient, task_id: str) -> list[dict]:
    return [task async for task in producer.events(task_id)]


async def test_a_claimed_task_runs_on_past_its_ttl_and_a_retry_gets_a_fresh_one(api, producer, consumer):
    task = await producer.submit("echo", {"data": 1}, expires_in_s=0.5)
    [leased] = await consumer.fetch(["echo"], wait_s=1)
    await asyncio.sleep(1.0)  # past its expires_at, and several reaper passes
    assert (await producer.get(task["task_id"]))["status"] == "PROCESSING"
    await consumer.complete(leased["task_id"], leased["lease"]["id"], {"data": 1})
    assert (await producer.get(task["task_id"]))["status"] == "COMPLETED"

    again = await producer.submit("echo", {"data": 2}, expires_in_s=0.5)
    await wait_status(producer, again["task_id"], "FAILED")
    retried = await producer.retry(again["task_id"])
    # The TTL counts again from the retry, not from the first create.
    assert retried["status"] == "PENDING" and retried["expires_at"] > retried["created_at"]
    [leased] = await consumer.fetch(["echo"], wait_s=1)
    assert leased["task_id"] == again["task_id"]


@pytest.mark.parametrize("api_env", [{"TASKFLEET_PENDING_TTL_S": "0.5"}], indirect=True)
async def test_the_default_ttl_applies_to_every_create_path(api, producer, consumer):
    plain = await producer.submit("echo", {"data": "plain"})
    longer = await producer.submit("echo", {"data": "own ttl"}, expires_in_s=600)
    batch = await producer.submit_many([{"workflow": "echo", "input": {"data": i}} for i in range(3)])
    async with httpx.AsyncClient(base_url=api.url) as http:
        alias = (await http.post("/api/echo/create-task", json={"data": "alias"})).json()
        aliased_own = (await http.post("/api/echo/create-task", json={"data": "alias", "expires_in_s": 600})).json()
        # /process: the default applies; it answers 202 once its wait is over, and the task expires.
        sync = await http.post("/api/echo/process", params={"wait_s": 0}, json={"data": "sync"})
    assert sync.status_code == 202
    expiring = [plain["task_id"], *(t["task_id"] for t in batch), alias["task_id"], sync.json()["task_id"]]
    for task_id in expiring:
        assert (await wait_status(producer, task_id, "FAILED"))["error"]["code"] == "expired"
    for task_id in (longer["task_id"], aliased_own["task_id"]):
        assert (await producer.get(task_id))["status"] == "PENDING"


@pytest.mark.parametrize("bad", [0, -1, "soon", 10**9, None])
async def test_a_bad_expires_in_s_is_a_422_on_every_create_path(api, producer, bad):
    if bad is None:  # null is the default, not an error
        assert (await producer.submit("echo", {}, expires_in_s=None))["expires_at"] is None
        return
    async with httpx.AsyncClient(base_url=api.url) as http:
        for path, body in (
            ("/api/tasks", {"workflow": "echo", "input": {}, "expires_in_s": bad}),
            ("/api/tasks/batch", {"tasks": [{"workflow": "echo", "input": {}, "expires_in_s": bad}]}),
            ("/api/echo/create-task", {"data": 1, "expires_in_s": bad}),
        ):
            response = await http.post(path, json=body)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["error"]["code"] == "validation_error"
    assert (await producer.list())["items"] == []


async def test_an_expired_stage_task_fails_its_pipeline(api, producer, consumer):
    created = await producer.submit("chain", {"words": ["a", "b"]}, expires_in_s=0.6)
    assert created["status"] == "PROCESSING" and created["expires_at"] is None  # a pipeline never waits itself
    # The first stage runs in time; its fan-out's tasks then wait past their own TTL.
    [first] = await consumer.fetch(["echo"], wait_s=2)
    await consumer.complete(first["task_id"], first["lease"]["id"], {"data": ["a", "b"]})
    ended = await wait_status(producer, created["task_id"], "FAILED")
    assert ended["error"]["code"] == "stage_failed" and ended["error"]["stage"] == "each"
    assert ended["error"]["cause"]["code"] == "expired"
    stages = {s["name"]: s for s in ended["stages"]}
    for task_id in stages["each"]["task_ids"]:
        assert (await producer.get(task_id))["status"] in ("FAILED", "CANCELLED")


async def test_replicas_on_postgres_end_each_expired_task_once(tmp_path):
    env = {**webhook_api_env("ttl-secret"), "TASKFLEET_REAP_INTERVAL_S": "0.05"}
    n = 300
    with postgres_database() as url, api_process(url, tmp_path, **env) as a, api_process(url, tmp_path, **env) as b:
        with Receiver() as receiver:
            async with ProducerClient(a.url) as producer:
                specs = [{"workflow": "echo", "input": {"data": i}, "expires_in_s": 0.5, "webhook_url": receiver.url}
                         for i in range(n)]  # fmt: skip
                ids = set()
                for start in range(0, n, 100):
                    ids |= {t["task_id"] for t in await producer.submit_many(specs[start:start + 100])}
                await wait_for(lambda: len(receiver.received) >= n, timeout_s=60)
                await asyncio.sleep(1.0)  # any second end would have sent a second webhook by now
                delivered = [json.loads(r[1])["task_id"] for r in receiver.received]
                assert sorted(delivered) == sorted(ids)  # each one once
            totals = 0.0
            async with httpx.AsyncClient() as http:
                for server in (a, b):
                    m = samples((await http.get(f"{server.url}/metrics")).text)
                    totals += m.get(("taskfleet_tasks_expired_total", (("workflow", "echo"),)), 0.0)
            assert totals == n

