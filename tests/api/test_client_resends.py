"""The producer client's resends against a real API, on both databases: a create whose answer
was lost (or answered ``commit_unknown``) after it committed is resent under the same
idempotency key, and exactly one task exists."""

from __future__ import annotations

import httpx
import pytest

from taskfleet.client import ApiTransport, ProducerClient


class LoseFirstAnswer(httpx.AsyncBaseTransport):
    """Passes each create to the real API; the first one's answer is then dropped (``lost``) or
    replaced by a ``503 commit_unknown`` (``unknown``), as a replica whose database went away
    right after the COMMIT would leave it."""

    def __init__(self, how: str) -> None:
        self._inner = ApiTransport()
        self.how = how
        self.creates: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "POST" and request.url.path in ("/api/tasks", "/api/tasks/batch"):
            self.creates.append(request.content)
            await response.aread()
            if len(self.creates) == 1:
                assert response.status_code == 201  # the first try did create the task(s)
                if self.how == "lost":
                    raise httpx.RemoteProtocolError("connection closed mid-answer", request=request)
                body = {"error": {"code": "commit_unknown", "message": "connection lost during COMMIT"}}
                return httpx.Response(503, json=body, headers={"Retry-After": "0"})
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("how", ["lost", "unknown"])
async def test_a_resent_create_makes_exactly_one_task(api, how):
    transport = LoseFirstAnswer(how)
    async with ProducerClient(api.url, transport=transport) as producer:
        task = await producer.submit("echo", {"data": "once"})  # no key given: the client made one
        listed = await producer.list()
    assert len(transport.creates) == 2 and transport.creates[0] == transport.creates[1]  # the same create, resent
    assert [t["task_id"] for t in listed["items"]] == [task["task_id"]]


async def test_a_resent_batch_makes_each_task_once(api):
    transport = LoseFirstAnswer("lost")
    async with ProducerClient(api.url, transport=transport) as producer:
        tasks = await producer.submit_many([{"workflow": "echo", "input": {"data": i}} for i in range(3)])
        listed = await producer.list()
    assert len(transport.creates) == 2
    assert sorted(t["task_id"] for t in listed["items"]) == sorted(t["task_id"] for t in tasks)
    assert len(tasks) == 3
