"""The consumer's completion batcher against a real task API: completions that finish together
share requests, each keeps its own answer, big outputs go alone, a failed request reaches
every caller."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from consumer.completions import ALONE_BYTES, CompletionBatcher
from support import api_process
from taskfleet import errors
from taskfleet.client import ConsumerClient, ProducerClient


class CountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


@pytest.fixture
def api(tmp_path):
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, TASKFLEET_LEASE_S="30") as server:
        yield server


async def leased(api_url: str, n: int) -> list[dict]:
    async with ProducerClient(api_url) as producer, ConsumerClient(api_url) as consumer:
        for i in range(n):
            await producer.submit("echo", {"data": i})
        tasks: list[dict] = []
        while len(tasks) < n:
            tasks += await consumer.fetch(["echo"], limit=n, wait_s=2)
        return tasks


async def test_concurrent_completions_share_requests_and_each_gets_its_answer(api):
    tasks = await leased(api.url, 30)
    transport = CountingTransport()
    async with ConsumerClient(api.url, transport=transport) as client:
        batcher = CompletionBatcher(client)
        stale = tasks[0]
        results = await asyncio.gather(
            batcher.complete(stale["task_id"], "lease_not_current", {"n": -1}),
            *(batcher.complete(t["task_id"], t["lease"]["id"], {"n": i}) for i, t in enumerate(tasks[1:])),
            return_exceptions=True,
        )
        await batcher.aclose()
    assert isinstance(results[0], errors.LeaseLost)
    assert [r["task_id"] for r in results[1:]] == [t["task_id"] for t in tasks[1:]]
    assert all(r["status"] == "COMPLETED" for r in results[1:])
    # 30 completions in far fewer requests: the first went alone, the rest queued behind it.
    assert transport.paths.count("/api/comm/tasks/complete") <= 3
    assert not any(p.endswith("/complete") and "/task/" in p for p in transport.paths)

    async with ProducerClient(api.url) as producer:
        first = await producer.get(stale["task_id"])
        assert first["status"] == "PROCESSING"  # the stale lease changed nothing
        for i, t in enumerate(tasks[1:]):
            done = await producer.get(t["task_id"])
            assert done["status"] == "COMPLETED" and done["output"] == {"n": i}


async def test_a_big_output_goes_alone_through_the_single_route(api):
    [task] = await leased(api.url, 1)
    transport = CountingTransport()
    big = {"blob": "x" * (ALONE_BYTES + 1)}
    async with ConsumerClient(api.url, transport=transport) as client:
        result = await CompletionBatcher(client).complete(task["task_id"], task["lease"]["id"], big)
    assert result["status"] == "COMPLETED"
    assert transport.paths == [f"/api/comm/task/{task['task_id']}/complete"]


async def test_a_failed_request_reaches_every_caller(tmp_path):
    # Nothing listens on this port: the request fails and each waiting caller sees the error.
    from support import free_port

    # No reconnects: what is tested is where the error goes, not how long the client tries.
    async with ConsumerClient(f"http://127.0.0.1:{free_port()}", timeout=2, connect_retries=0) as client:
        batcher = CompletionBatcher(client)
        results = await asyncio.gather(
            *(batcher.complete(f"tsk_{i}", "lease", {}) for i in range(5)), return_exceptions=True
        )
    assert len(results) == 5 and all(isinstance(r, (httpx.HTTPError, errors.TaskfleetError)) for r in results)
