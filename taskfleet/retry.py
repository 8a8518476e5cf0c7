"""The retry transports the HTTP clients (task API, model servers) sit on.

``connect_retry_transport`` (every client) resends only failures before the request left: a
refused or timed-out connect cannot have run anything on the other side. Any response means the
request may have been acted on, so no status code is retried there; callers that know better
(tenacity around a model call) decide. ``ResendTransport`` (the producer client, above it) knows
the task API's 503 codes, and which requests are safe to send twice.
"""

from __future__ import annotations

import httpx
from httpx_retries import Retry, RetryTransport
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]


def connect_retry_transport(
    transport: httpx.AsyncBaseTransport, *, total: int, backoff_factor: float
) -> RetryTransport:
    retry = Retry(
        total=total,
        backoff_factor=backoff_factor,
        allowed_methods=_ALL_METHODS,
        retry_on_exceptions=[httpx.ConnectError, httpx.ConnectTimeout],
    )
    # httpx-retries reads an empty status_forcelist as "the defaults" (429/502/503/504), so it
    # is cleared after construction: no status is resent at this layer.
    retry.status_forcelist = frozenset()
    return RetryTransport(transport=transport, retry=retry)


# -- resends of answered requests (the producer client) ------------------------------------------
RESEND_SAFE = "taskfleet.resend_safe"  # request extension: resending can never do the work twice

# 503 codes whose request the API did not act on: any request may be resent.
NOT_ACTED_ON = frozenset({"database_unavailable", "database_full"})


class _Resend(Exception):
    def __init__(self, response: httpx.Response | None, retry_after_s: float | None) -> None:
        self.response, self.retry_after_s = response, retry_after_s


class ResendTransport(httpx.AsyncBaseTransport):
    """Resends through a database restart: a 503 (with backoff, honouring ``Retry-After``) and a
    connection lost after the request went out.

    What may be resent depends on what the first try may have done:
    - ``database_unavailable`` / ``database_full``: the API did not act on it; any request.
    - any other 503 (``commit_unknown``) and a connection lost mid-answer: it may have been acted
      on, so only requests that are safe twice: GET/HEAD, and those marked ``RESEND_SAFE`` (a create
      carrying its idempotency key: a resend answers the first task).
    A streamed body (an upload) is never resent. After ``budget_s`` the last answer (or error)
    is the caller's."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport, *, budget_s: float = 30.0, backoff_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._transport = transport
        self.budget_s, self.backoff_s, self.backoff_max_s = budget_s, backoff_s, backoff_max_s

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.ByteStream):
            return await self._transport.handle_async_request(request)
        safe = request.method in ("GET", "HEAD") or bool(request.extensions.get(RESEND_SAFE))
        last: httpx.Response | None = None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self.budget_s), wait=self._wait, reraise=True,
                retry=retry_if_exception(lambda exc: _never_sent(exc) or isinstance(exc, _Resend) or (safe and _lost_answer(exc))),
            ):  # fmt: skip
                with attempt:
                    response = await self._transport.handle_async_request(request)
                    if response.status_code != 503:
                        return response
                    await response.aread()
                    code = _error_code(response)
                    if not (safe or code in NOT_ACTED_ON):
                        return response
                    last = response
                    raise _Resend(response, _retry_after(response))
        except _Resend:
            assert last is not None
            return last  # out of budget: the caller sees the API's own answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        backoff = min(self.backoff_max_s, self.backoff_s * 2 ** (state.attempt_number - 1))
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Resend) and exc.retry_after_s is not None:
            return min(self.backoff_max_s, max(backoff, exc.retry_after_s))
        return backoff

    async def aclose(self) -> None:
        await self._transport.aclose()


def _never_sent(exc: BaseException) -> bool:
    # The connect retries below ran out: still nothing reached the API, so any request may go again.
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


def _lost_answer(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol)


def _error_code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
