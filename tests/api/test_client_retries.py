"""The task-API client resends only what never reached the API."""

from __future__ import annotations

import httpx
import pytest

from taskfleet.client import ConsumerClient, ProducerClient
from taskfleet.errors import LeaseLost, Unavailable


async def test_connect_errors_are_retried_answers_are_not():
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 3:
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "busy"}})
        if len(calls) == 4:
            return httpx.Response(409, json={"error": {"code": "lease_lost", "message": "gone"}})
        return httpx.Response(200, json={"task_id": "t", "status": "COMPLETED", "attempts": 1, "error": None})

    async with ConsumerClient("http://api.test", transport=httpx.MockTransport(handler)) as client:
        await client.complete("t", "l", {})  # refused once, then sent again: 2 calls
        assert len(calls) == 2
        with pytest.raises(Unavailable):  # a 503 may have been acted on: not resent
            await client.complete("t", "l", {})
        assert len(calls) == 3
        with pytest.raises(LeaseLost):
            await client.complete("t", "l", {})
        assert len(calls) == 4


async def test_a_base_url_prefix_is_kept_on_every_route():
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url).split("?")[0])
        if request.url.path.endswith("/fetch"):
            return httpx.Response(204)
        if request.url.path.endswith("/tasks/complete"):
            return httpx.Response(200, json={"results": []})
        return httpx.Response(201, json={"task_id": "t"})

    for base in ("http://api.test/prefix", "http://api.test/prefix/"):
        async with ProducerClient(base, transport=httpx.MockTransport(handler)) as producer:
            await producer.submit("echo", {})
            await producer.get("t")
        async with ConsumerClient(base, transport=httpx.MockTransport(handler)) as consumer:
            await consumer.fetch(["echo"], wait_s=0)
            await consumer.complete_many([])
    assert seen == 2 * [
        "http://api.test/prefix/api/tasks", "http://api.test/prefix/api/tasks/t",
        "http://api.test/prefix/api/comm/task/fetch", "http://api.test/prefix/api/comm/tasks/complete",
    ]  # fmt: skip
