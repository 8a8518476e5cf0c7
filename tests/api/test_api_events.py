"""GET /api/tasks/{id}/events: the task's JSON on every change, carried by the queue's own signals
(in this replica) or by the shared recheck (changes made on another replica)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

import httpx
import pytest

from support import api_process, postgres_database
from task_api.events import TaskEvents
from taskfleet.client import ConsumerClient, ProducerClient

# The recheck is an hour away: whatever arrives in these streams came from the queue's signals.
SIGNALS_ONLY = {"TASKFLEET_LEASE_S": "30", "TASKFLEET_REAP_INTERVAL_S": "0.2", "TASKFLEET_EVENTS_RECHECK_S": "3600"}


async def task_events(url: str, task_id: str) -> AsyncIterator[dict[str, Any]]:
    """Each ``event: task`` of the stream, parsed; returns when the server closes it."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with http.stream("GET", f"/api/tasks/{task_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    assert event == "task"
                    yield json.loads(line[len("data: "):])


class Collector:
    """Reads a stream in the background; ``next()`` waits for the following event."""

    def __init__(self, url: str, task_id: str) -> None:
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(url, task_id))

    async def _run(self, url: str, task_id: str) -> None:
        try:
            async for body in task_events(url, task_id):
                await self.events.put(body)
        finally:
            await self.events.put(None)

    async def next(self, timeout_s: float = 10) -> dict[str, Any] | None:
        return await asyncio.wait_for(self.events.get(), timeout_s)


@pytest.mark.parametrize("api_env", [SIGNALS_ONLY])
async def test_stream_follows_a_task_to_its_end_and_closes(api, producer, consumer):
    created = await producer.submit("echo", {"data": "watched"})
    stream = Collector(api.url, created["task_id"])
    first = await stream.next()
    assert first["task_id"] == created["task_id"] and first["status"] == "PENDING" and first["history"] == []

    (task,) = await consumer.fetch(["echo"], wait_s=5)
    lease = task["lease"]["id"]
    claimed = await stream.next()
    assert claimed["status"] == "PROCESSING" and claimed["consumer_id"] == "test-consumer"
    assert [h["consumer_id"] for h in claimed["history"]] == ["test-consumer"]

    await consumer.heartbeat(task["task_id"], lease, {"percent": 40, "message": "halfway"})
    progressed = await stream.next()
    assert progressed["progress"] == {"percent": 40, "message": "halfway"}

    # A heartbeat that changes nothing the task shows sends no event.
    await consumer.heartbeat(task["task_id"], lease, {"percent": 40, "message": "halfway"})
    await consumer.complete(task["task_id"], lease, {"data": "done"})
    done = await stream.next()
    assert done["status"] == "COMPLETED" and done["output"] == {"data": "done"}
    assert await stream.next() is None  # closed after the terminal state
    await stream.task


@pytest.mark.parametrize("api_env", [SIGNALS_ONLY])
async def test_stream_of_a_cancelled_pending_task_ends_cancelled(api, producer):
    created = await producer.submit("echo", {"data": "dropped"})
    stream = Collector(api.url, created["task_id"])
    assert (await stream.next())["status"] == "PENDING"
    await producer.cancel(created["task_id"])
    assert (await stream.next())["status"] == "CANCELLED"
    assert await stream.next() is None


async def test_stream_of_a_finished_task_sends_it_once_and_closes(api, producer, consumer):
    created = await producer.submit("echo", {"data": 1})
    (task,) = await consumer.fetch(["echo"], wait_s=5)
    await consumer.complete(task["task_id"], task["lease"]["id"], {"data": 1})
    bodies = [body async for body in task_events(api.url, created["task_id"])]
    assert [b["status"] for b in bodies] == ["COMPLETED"]


async def test_unknown_task_is_404_not_a_stream(api):
    async with httpx.AsyncClient(base_url=api.url) as http:
        response = await http.get("/api/tasks/tsk_nope/events")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_events_need_a_producer_token(database_url, tmp_path):
    env = {"TASKFLEET_PRODUCER_TOKENS": "ptok", "TASKFLEET_CONSUMER_TOKENS": "ctok"}
    with api_process(database_url, tmp_path, **env) as api:
        async with ProducerClient(api.url, "ptok") as producer, httpx.AsyncClient(base_url=api.url) as http:
            created = await producer.submit("echo", {"data": 1})
            path = f"/api/tasks/{created['task_id']}/events"
            assert (await http.get(path)).status_code == 401
            assert (await http.get(path, headers={"Authorization": "Bearer ctok"})).status_code == 403


async def test_change_on_another_replica_reaches_the_stream():
    """Progress and completion made through replica A reach a stream open on replica B: no
    NOTIFY carries them, the replica's shared recheck does."""
    env = {"TASKFLEET_REAP_INTERVAL_S": "60", "TASKFLEET_EVENTS_RECHECK_S": "0.2"}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp, postgres_database() as url:
        with api_process(url, Path(tmp), **env) as a, api_process(url, Path(tmp), **env) as b:
            async with ProducerClient(a.url) as producer, ConsumerClient(a.url, consumer_id="on-a") as consumer:
                created = await producer.submit("echo", {"data": "far"})
                stream = Collector(b.url, created["task_id"])
                assert (await stream.next())["status"] == "PENDING"
                (task,) = await consumer.fetch(["echo"], wait_s=5)
                assert (await stream.next())["status"] == "PROCESSING"
                await consumer.heartbeat(task["task_id"], task["lease"]["id"], {"percent": 70, "message": ""})
                assert (await stream.next())["progress"]["percent"] == 70
                await consumer.complete(task["task_id"], task["lease"]["id"], {"data": "far"})
                assert (await stream.next())["status"] == "COMPLETED"
                assert await stream.next() is None


async def test_recheck_wakes_only_watches_whose_task_changed(queue_db):
    """One statement for every watched task: a changed row wakes its watches, an unchanged one not."""
    now = time.time()
    for task_id in ("tsk_a", "tsk_b"):
        await queue_db.execute(
            "INSERT INTO tasks (id, workflow, status, input, priority, max_attempts, timeout_s, metadata, "
            "created_at, updated_at) VALUES (:id, 'echo', 'PENDING', '{}', 0, 3, 60.0, '{}', :now, :now)",
            {"id": task_id, "now": now},
        )
    events = TaskEvents()
    a, b = events.watch("tsk_a"), events.watch("tsk_b")
    await events.recheck(queue_db)  # first sight: each stream re-reads once
    assert a.changed.is_set() and b.changed.is_set()
    a.changed.clear()
    b.changed.clear()
    await queue_db.execute("UPDATE tasks SET updated_at = :t WHERE id = 'tsk_a'", {"t": now + 1})
    await events.recheck(queue_db)
    assert a.changed.is_set() and not b.changed.is_set()
    a.changed.clear()
    await queue_db.execute("DELETE FROM tasks WHERE id = 'tsk_b'")
    await events.recheck(queue_db)
    assert b.changed.is_set() and not a.changed.is_set()  # gone: its stream reads it and ends
    events.unwatch(a)
    events.unwatch(b)
    assert events.streams == 0


async def test_shutdown_ends_open_streams_instead_of_waiting_on_them(tmp_path):
    """uvicorn waits for open responses before it stops: on SIGTERM the API ends its streams
    (clients reconnect elsewhere) rather than hanging until it is killed."""
    import signal

    api = api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path).start()
    try:
        async with ProducerClient(api.url) as producer:
            created = await producer.submit("echo", {"data": "open"})
        stream = Collector(api.url, created["task_id"])
        assert (await stream.next())["status"] == "PENDING"
        returncode = await asyncio.to_thread(api.terminate, 20)
        assert returncode != -signal.SIGKILL, "the API had to be killed: an open stream held its shutdown"
        assert await stream.next() is None  # the server closed the stream
        await stream.task
    finally:
        api.kill()


@pytest.mark.parametrize("api_env", [SIGNALS_ONLY])
async def test_a_pipelines_stream_follows_its_stages(api, producer, consumer):
    """A stage task's change wakes its pipeline's stream: each stage is seen done, then the end."""
    created = await producer.submit("echo_fanout", {"words": ["a", "b"]})
    stream = Collector(api.url, created["task_id"])
    body = await stream.next()
    assert body["status"] == "PROCESSING" and [s["name"] for s in body["stages"]] == ["first", "each", "last"]

    async def until(done_counts: list[int]) -> dict[str, Any]:
        nonlocal body
        while [s["completed"] for s in body["stages"]] != done_counts:
            body = await stream.next()
            assert body is not None, "the stream ended early"
        return body

    async def run_stage() -> None:
        for task in await consumer.fetch(["echo"], limit=10, wait_s=5):
            await consumer.complete(task["task_id"], task["lease"]["id"], {"data": task["input"]["data"]})

    await run_stage()
    assert (await until([1, 0, 0]))["stages"][1]["total"] == 2  # the map stage started, seen live
    await run_stage()
    assert (await until([1, 2, 0]))["status"] == "PROCESSING"
    await run_stage()
    assert (await until([1, 2, 1]))["status"] == "COMPLETED" and body["output"] == {"words": [{"data": "a"}, {"data": "b"}]}
    assert await stream.next() is None


@pytest.mark.parametrize("api_env", [{**SIGNALS_ONLY, "TASKFLEET_EVENTS_MAX_S": "0.5"}])
async def test_a_stream_open_past_its_limit_is_closed_and_a_new_one_starts_afresh(api, producer):
    created = await producer.submit("echo", {"data": "long"})
    stream = Collector(api.url, created["task_id"])
    assert (await stream.next())["status"] == "PENDING"
    assert await stream.next() is None  # closed while the task still waits: the client reconnects
    again = Collector(api.url, created["task_id"])
    assert (await again.next())["status"] == "PENDING"
