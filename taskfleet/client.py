"""Async clients for the task API, built on httpx: one for producers, one for consumers.

Retries live at the transport: a request that never reached the API (connection refused or
timed out while connecting) is resent by both clients. The producer client also rides out a
database restart (``taskfleet.retry.ResendTransport``): it resends a ``503 database_unavailable``
(the API did not act on it), and, for reads and creates only, a ``503 commit_unknown`` or a
connection lost mid-answer. Every create carries an idempotency key -- the caller's, or one made
per call of ``submit`` / per item of ``submit_many`` -- so a resend of a create that did commit
answers the first task instead of making a second. The consumer client resends nothing that was
answered: the API's fencing would turn a blind resend of ``complete`` into a confusing
``lease_lost``; the consumer's own loops back off and retry (consumer/attempts.py).

The bytes move through aiohttp (httpx-aiohttp's transport) under the httpx API: on the 2-core
reference machine httpx's own httpcore stack costs about 0.95 ms of CPU per request against
about 0.5 ms through aiohttp, and a producer sends one request per task.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from typing import Any, AsyncIterator, Iterable

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from taskfleet import errors
from taskfleet.logs import context_headers, stamp_context_headers
from taskfleet.retry import RESEND_SAFE, ResendTransport, connect_retry_transport
from taskfleet.states import TERMINAL

PER_TASK_PATHS = ("/api/tasks", "/api/comm/task/fetch", "/api/comm/tasks/complete")
_RESEND_SAFE = {RESEND_SAFE: True}  # a create with its idempotency key: twice answers the first task


def new_idempotency_key() -> str:
    """The key a create gets when its caller gave none: one per logical create, kept across the
    client's resends of it."""
    return f"auto-{uuid.uuid4().hex}"

_BY_STATUS: dict[int, type[errors.TaskfleetError]] = {
    400: errors.BadRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    422: errors.InvalidInput,
    503: errors.Unavailable,
}


class ApiTransport(AiohttpTransport):
    """The transport under the task API clients and the consumer's model-server clients.

    httpx-aiohttp turns every ``aiohttp.ClientConnectionError`` into ``ConnectTimeout``,
    including a server that dropped the connection after the request went out. Only a failed
    connect may be resent, so the others become ``RemoteProtocolError``."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ConnectionTimeoutError):
                raise
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(exc), request=request) from cause
            raise httpx.RemoteProtocolError(str(exc), request=request) from cause


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    code, message = errors.parse_error_body(response.text, response.status_code)
    cls = errors.LeaseLost if code == "lease_lost" else _BY_STATUS.get(response.status_code, errors.TaskfleetError)
    raise cls(
        message, code=code, status=response.status_code, retryable=response.status_code >= 500,
        details=_error_details(response),
    )


def _error_details(response: httpx.Response) -> Any:
    """The field-level ``details`` of an error answer (a 422's pydantic errors), if it has any."""
    try:
        return response.json()["error"].get("details")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` for each Server-Sent Event in a stream of lines; comments (the server's
    keep-alives) and events without data are skipped, as an EventSource does."""
    event, data = "message", []
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)


class _Base:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        resend_for_s: float | None = None,
        connect_retries: int = 5,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        stack: httpx.AsyncBaseTransport = connect_retry_transport(
            transport or ApiTransport(), total=connect_retries, backoff_factor=0.2
        )
        if resend_for_s:
            stack = ResendTransport(stack, budget_s=resend_for_s)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=stack,
            trust_env=False,
        )
        self._stack = stack
        # The per-task routes as absolute URLs, parsed once: httpx re-parses and joins a
        # relative path against base_url on every request (~50 µs each).
        base = str(self._http.base_url).rstrip("/")  # keeps a path prefix, as httpx's own join does
        self._absolute = {path: httpx.URL(base + path) for path in PER_TASK_PATHS}
        self._headers = dict(self._http.headers)
        self._stamp_context = False  # whether requests carry the request and task ids of the work in hand

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, url, **kwargs)
        raise_for_error(response)
        return response

    async def _send(
        self, method: str, path: str, *, json: Any = None, params: Any = None, timeout_s: float | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """A per-task request (one of PER_TASK_PATHS), handed to the transport stack directly.

        The AsyncClient's own layers (merging headers, cookies and URLs, the auth and redirect
        flows, event hooks) were about a tenth of a consumer's CPU per task, and have nothing
        to do here: the headers are fixed, the API sets no cookie and answers no redirect. The
        retries, the error mapping and the tests' doubles are the transport's, as for ``_call``."""
        headers = {**self._headers, **context_headers()} if self._stamp_context else self._headers
        timeout = self._http.timeout if timeout_s is None else httpx.Timeout(timeout_s)
        request = httpx.Request(
            method, self._absolute[path], params=params, headers=headers, json=json,
            extensions={"timeout": timeout.as_dict(), **(extensions or {})},
        )
        response = await self._stack.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        raise_for_error(response)
        return response

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ProducerClient(_Base):
    """``resend_for_s``: how long a request is resent through 503s, lost answers and an API that
    cannot be reached (see the module's docstring) before the error is the caller's; 0 turns that
    off. ``connect_retries``: quick reconnects (0.2 s, doubling) inside each of those tries."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        resend_for_s: float = 30.0,
        connect_retries: int = 5,
    ) -> None:
        super().__init__(
            base_url, token, timeout=timeout, transport=transport, resend_for_s=resend_for_s, connect_retries=connect_retries
        )

    async def submit(
        self,
        workflow: str,
        input: Any,
        *,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        expires_in_s: float | None = None,
    ) -> dict[str, Any]:
        """Create a task. Without ``idempotency_key`` one is made for this call (``auto-`` and a
        random hex), so that the client's own resends can never create the task twice; pass
        your own to make *your* retries (a new call, a restarted process) safe too."""
        body: dict[str, Any] = {"workflow": workflow, "input": input}
        idempotency_key = idempotency_key or new_idempotency_key()
        optional = {
            "expires_in_s": expires_in_s,
            "priority": priority,
            "max_attempts": max_attempts,
            "timeout_s": timeout_s,
            "webhook_url": webhook_url,
            "metadata": metadata,
            "idempotency_key": idempotency_key,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return (await self._send("POST", "/api/tasks", json=body, extensions=_RESEND_SAFE)).json()

    async def submit_many(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create several tasks in one request (all or none); each item is a create body. An
        item without ``idempotency_key`` gets one made for it, as ``submit`` does."""
        keyed = [task if task.get("idempotency_key") else {**task, "idempotency_key": new_idempotency_key()} for task in tasks]
        response = await self._call("POST", "/api/tasks/batch", json={"tasks": keyed}, extensions=_RESEND_SAFE)
        return response.json()["tasks"]

    async def get(self, task_id: str) -> dict[str, Any]:
        return (await self._call("GET", f"/api/tasks/{task_id}")).json()

    async def list(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        producer: str | None = None,
    ) -> dict[str, Any]:
        given = {"status": status, "workflow": workflow, "limit": limit, "cursor": cursor, "producer": producer}
        params = {k: v for k, v in given.items() if v is not None}
        return (await self._call("GET", "/api/tasks", params=params)).json()

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return (await self._call("POST", f"/api/tasks/{task_id}/cancel")).json()

    async def retry(self, task_id: str) -> dict[str, Any]:
        return (await self._call("POST", f"/api/tasks/{task_id}/retry")).json()

    async def set_priority(self, task_id: str, priority: int) -> dict[str, Any]:
        return (await self._call("POST", f"/api/tasks/{task_id}/priority", json={"priority": priority})).json()

    async def rerun(self, task_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return (await self._call("POST", f"/api/tasks/{task_id}/rerun", headers=headers)).json()

    async def wait(self, task_id: str, *, timeout: float | None = None, poll_s: float = 0.25) -> dict[str, Any]:
        """Poll until the task is terminal; raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = await self.get(task_id)
            if task["status"] in TERMINAL:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} still {task['status']} after {timeout}s")
            await asyncio.sleep(poll_s)

    async def events(self, task_id: str) -> AsyncIterator[dict[str, Any]]:
        """The task on every change, from ``GET /api/tasks/{id}/events``: at once, then on each
        status, progress or attempt change, until the server closes it after the terminal state."""
        # No read timeout: a quiet task sends nothing for as long as it runs.
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        headers = {"Accept": "text/event-stream"}
        async with self._http.stream("GET", f"/api/tasks/{task_id}/events", headers=headers, timeout=timeout) as response:
            if not response.is_success:
                await response.aread()
                raise_for_error(response)
            async for event, data in iter_sse(response.aiter_lines()):
                if event == "task":
                    yield json.loads(data)

    async def process(self, route: str, body: dict[str, Any], *, wait_s: float = 120.0) -> httpx.Response:
        """The synchronous route; returns the raw response (200 result, 202 pending, 422/502 failure)."""
        return await self._http.post(
            f"/api/{route}/process", params={"wait_s": wait_s}, json=body, timeout=wait_s + 30
        )

    async def upload(self, path: str, content_type: str = "application/octet-stream") -> str:
        with open(path, "rb") as fh:
            files = {"file": (path.rsplit("/", 1)[-1], fh, content_type)}
            return (await self._call("POST", "/api/files", files=files)).json()["url"]


class AdminClient(ProducerClient):
    """A producer client that also reads the operator routes (admin token)."""

    async def consumers(self) -> list[dict[str, Any]]:
        body = (await self._call("GET", "/api/consumers")).json()
        return body["consumers"] if isinstance(body, dict) else body

    async def stats(self) -> dict[str, Any]:
        return (await self._call("GET", "/api/stats")).json()

    async def usage(self, *, group_by: str = "producer", since: Any = None, until: Any = None) -> dict[str, Any]:
        params = {k: v for k, v in {"group_by": group_by, "since": since, "until": until}.items() if v is not None}
        return (await self._call("GET", "/api/usage", params=params)).json()


class ConsumerClient(_Base):
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        consumer_id: str | None = None,
        host: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_retries: int = 5,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout, transport=transport, connect_retries=connect_retries)
        # The API's log lines for a task's heartbeats and completion carry the attempt's request id.
        self._http.event_hooks["request"].append(stamp_context_headers)
        self._stamp_context = True
        self.consumer_id = consumer_id or f"csm_{uuid.uuid4().hex[:12]}"
        self.host = host or socket.gethostname()

    async def fetch(
        self, workflows: Iterable[str] | None = None, *, limit: int = 1, wait_s: float = 20.0,
        wake_on_finish: bool = False,
    ) -> list[dict[str, Any]]:
        """Lease up to ``limit`` tasks, waiting up to ``wait_s``. ``wake_on_finish``: the API
        ends the wait early (empty) when one of this consumer's leases ends."""
        params: list[tuple[str, Any]] = [(("workflow"), w) for w in (workflows or ())]
        params += [("consumer_id", self.consumer_id), ("host", self.host), ("limit", limit), ("wait_s", wait_s)]
        if wake_on_finish:
            params.append(("wake_on_finish", "true"))
        response = await self._send(
            "GET", "/api/comm/task/fetch", params=params, timeout_s=wait_s + self._http.timeout.read
        )
        if response.status_code == 204:
            return []
        return response.json()["tasks"]

    async def heartbeat(
        self, task_id: str, lease_id: str, progress: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"lease_id": lease_id}
        if progress is not None:
            body["progress"] = progress
        return (await self._call("POST", f"/api/comm/task/{task_id}/heartbeat", json=body)).json()

    async def complete(self, task_id: str, lease_id: str, output: Any, compute_s: float = 0.0) -> dict[str, Any]:
        body: dict[str, Any] = {"lease_id": lease_id, "output": output}
        if compute_s:  # the attempt's model-server slot seconds; left out when it used none
            body["compute_s"] = compute_s
        return (await self._call("POST", f"/api/comm/task/{task_id}/complete", json=body)).json()

    async def complete_many(self, items: list[tuple]) -> list[dict[str, Any]]:
        """Complete several leases in one request: [(task_id, lease_id, output[, compute_s])].
        Each result is {"task_id", "status"} or {"task_id", "error": {"code": "lease_lost" |
        "not_found", …}}."""
        body = {"items": [_complete_item(*item) for item in items]}
        return (await self._send("POST", "/api/comm/tasks/complete", json=body)).json()["results"]

    async def complete_and_fetch(
        self, items: list[tuple], workflows: Iterable[str] | None = None, *, limit: int = 1,
        wait_s: float = 20.0, wake_on_finish: bool = False,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``complete_many``, and then this consumer's next fetch in the same request: (the
        results, the tasks it leased). The completions are committed before the fetch waits,
        so the results arrive with the tasks, up to ``wait_s`` later."""
        body = {
            "items": [_complete_item(*item) for item in items],
            "fetch": {"workflow": list(workflows or ()), "consumer_id": self.consumer_id, "host": self.host,
                      "limit": limit, "wait_s": wait_s},
        }
        if wake_on_finish:
            body["fetch"]["wake_on_finish"] = True
        response = await self._send("POST", "/api/comm/tasks/complete", json=body, timeout_s=wait_s + self._http.timeout.read)
        answer = response.json()
        return answer["results"], answer["tasks"]

    async def fail(
        self,
        task_id: str,
        lease_id: str,
        code: str,
        message: str,
        retryable: bool,
        retry_after_s: float | None = None,
        compute_s: float = 0.0,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "lease_id": lease_id,
            "error": {"code": code, "message": message},
            "retryable": retryable,
        }
        if retry_after_s is not None:
            body["retry_after_s"] = retry_after_s
        if compute_s:
            body["compute_s"] = compute_s
        return (await self._call("POST", f"/api/comm/task/{task_id}/fail", json=body)).json()

    async def report(self, report: dict[str, Any]) -> float:
        """Tell the API this consumer is alive, with its load and model servers (``consumer_id``
        and ``host`` filled in); returns how many seconds to wait before the next report."""
        body = {"consumer_id": self.consumer_id, "host": self.host, **report}
        return float((await self._call("POST", "/api/comm/consumers/report", json=body)).json()["report_every_s"])

    async def release(self, task_id: str, lease_id: str) -> dict[str, Any]:
        return (await self._call("POST", f"/api/comm/task/{task_id}/release", json={"lease_id": lease_id})).json()


def _complete_item(task_id: str, lease_id: str, output: Any, compute_s: float = 0.0) -> dict[str, Any]:
    item: dict[str, Any] = {"task_id": task_id, "lease_id": lease_id, "output": output}
    if compute_s:
        item["compute_s"] = compute_s
    return item
