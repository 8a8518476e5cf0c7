"""Compute accounting at the API, on SQLite and Postgres: the seconds a consumer reports with
complete and fail add up on the task (usage), in GET /api/usage and in
taskfleet_compute_seconds_total. (End to end with a real TTS server: tests/tts/test_tts_fleet_usage.py.)"""

from __future__ import annotations

import time

import httpx
import pytest

from support import api_process
from taskfleet.client import AdminClient, ConsumerClient, ProducerClient
from taskfleet.errors import Forbidden
from test_api_metrics import samples


async def test_reported_seconds_add_up_on_the_task_and_in_usage(api, producer, consumer):
    start = time.time()
    task = await producer.submit("echo", {"data": 1}, max_attempts=3)
    assert task["usage"] == {"compute_s": 0.0}
    [t] = await consumer.fetch(["echo"], wait_s=1)
    # A failed attempt used the device too: its seconds count.
    failed = await consumer.fail(t["task_id"], t["lease"]["id"], "flaky", "try again", True, retry_after_s=0, compute_s=0.5)
    assert failed["status"] == "PENDING"
    [t] = await consumer.fetch(["echo"], wait_s=2)
    await consumer.complete(t["task_id"], t["lease"]["id"], {"data": 1}, compute_s=1.25)
    between = time.time()
    other = await producer.submit("echo", {"data": 2})
    idle = await producer.submit("echo", {"data": 3})
    leased = await consumer.fetch(["echo"], limit=2, wait_s=1)
    by_id = {x["task_id"]: x for x in leased}
    await consumer.complete_many([
        (other["task_id"], by_id[other["task_id"]]["lease"]["id"], {}, 2.0),
        (idle["task_id"], by_id[idle["task_id"]]["lease"]["id"], {}),  # used no model server
    ])  # fmt: skip

    done = await producer.get(task["task_id"])
    assert done["usage"] == {"compute_s": 1.75}
    assert (await producer.get(other["task_id"]))["usage"] == {"compute_s": 2.0}
    assert (await producer.get(idle["task_id"]))["usage"] == {"compute_s": 0.0}

    async with AdminClient(api.url) as admin:
        usage = await admin.usage(group_by="workflow", since=start - 1)
        assert usage["group_by"] == "workflow" and usage["total_compute_s"] == 3.75
        assert usage["groups"] == [{"key": "echo", "compute_s": 3.75, "attempts": 3, "tasks": 2}]
        # The window is by when each attempt ended: before `between` only the first task's two.
        early = await admin.usage(group_by="workflow", since=start - 1, until=between)
        assert early["groups"] == [{"key": "echo", "compute_s": 1.75, "attempts": 2, "tasks": 1}]
        late = await admin.usage(group_by="workflow", since=between)
        assert late["total_compute_s"] == 2.0
        # ISO 8601 works as well as epoch seconds; an empty window is empty, not an error.
        assert (await admin.usage(group_by="workflow", since="2000-01-01T00:00:00Z"))["total_compute_s"] == 3.75
        assert (await admin.usage(group_by="workflow", since=time.time() + 60, until=time.time() + 120))["groups"] == []
    async with httpx.AsyncClient(base_url=api.url) as http:
        m = samples((await http.get("/metrics")).text)
    assert m[("taskfleet_compute_seconds_total", (("producer", "default"), ("workflow", "echo")))] == 3.75


@pytest.mark.parametrize("params", [
    {"group_by": "consumer"}, {"since": "yesterday"}, {"until": "soon"}, {"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
])  # fmt: skip
async def test_bad_usage_queries_are_422_with_a_code(api, params):
    async with httpx.AsyncClient(base_url=api.url) as http:
        response = await http.get("/api/usage", params=params)
    assert response.status_code == 422, response.text
    expected = "invalid_time_range" if "until" in params and "since" in params else "validation_error"
    assert response.json()["error"]["code"] == expected


@pytest.mark.parametrize("bad", [-1, "lots", 10**9, None])
async def test_a_bad_compute_report_is_a_422_and_changes_nothing(api, producer, consumer, bad):
    task = await producer.submit("echo", {"data": 1})
    [t] = await consumer.fetch(["echo"], wait_s=1)
    async with httpx.AsyncClient(base_url=api.url) as http:
        for path, body in (
            (f"/api/comm/task/{t['task_id']}/complete", {"lease_id": t["lease"]["id"], "output": {}, "compute_s": bad}),
            (f"/api/comm/task/{t['task_id']}/fail",
             {"lease_id": t["lease"]["id"], "error": {"code": "x"}, "retryable": False, "compute_s": bad}),
            ("/api/comm/tasks/complete",
             {"items": [{"task_id": t["task_id"], "lease_id": t["lease"]["id"], "output": {}, "compute_s": bad}]}),
        ):  # fmt: skip
            response = await http.post(path, json=body)
            assert response.status_code == 422, (path, response.text)
    current = await producer.get(task["task_id"])
    assert current["status"] == "PROCESSING" and current["usage"] == {"compute_s": 0.0}


async def test_usage_takes_an_admin_token(tmp_path):
    tokens = {"TASKFLEET_PRODUCER_TOKENS": "ptok", "TASKFLEET_CONSUMER_TOKENS": "ctok", "TASKFLEET_ADMIN_TOKENS": "atok"}
    with api_process(f"sqlite:///{tmp_path / 't.db'}", tmp_path, **tokens) as api:
        async with ProducerClient(api.url, token="ptok") as producer, AdminClient(api.url, token="atok") as admin:
            with pytest.raises(Forbidden):
                await AdminClient.usage(producer)
            assert (await admin.usage())["groups"] == []
        async with ConsumerClient(api.url, token="ctok") as consumer:
            with pytest.raises(Forbidden):
                await AdminClient.usage(consumer)
