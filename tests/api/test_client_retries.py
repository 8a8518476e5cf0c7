"""The task-API client resends only what never reached the API."""

from __future__ import annotations

import httpx
import pytest

from taskfleet.client import ConsumerClient
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
