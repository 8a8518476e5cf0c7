"""Clients for model servers: several URLs per kind, chosen by health and load, with retries.

Layers, from the wire up: httpx-retries' transport resends a request that never reached a server
(connection refused, connect timeout); tenacity retries a whole call that failed in a way another
try may fix (503, dropped connection), possibly on another server of the kind; a circuit breaker
per server stops calls to one that keeps failing until a ``/health`` probe says it is back.

An outage ends in ``ModelServerUnavailable`` (the runtime releases the task, attempt not counted);
a 4xx ends in a non-retryable ``ModelServerError`` carrying the server's own error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from consumer.circuit import CircuitBreaker, CircuitState
from consumer.errors import ModelServerError, ModelServerTimeout, ModelServerUnavailable
from consumer.metrics import Metrics
from taskfleet.client import ApiTransport
from taskfleet.errors import parse_error_body
from taskfleet.logs import stamp_context_headers
from taskfleet.retry import connect_retry_transport

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # a server that cannot accept a connection in 5 s is down for our purposes
HEALTH_TIMEOUT_S = 3.0
# A server found full of other clients' calls (other consumers, direct callers) is asked again
# this soon, then twice as late each time it is still full, up to the health TTL: its calls may
# end at any moment, and until we look again its free room goes unused by this consumer.
BUSY_RECHECK_S = 0.1
CALL_ATTEMPTS = 3
# Statuses that mean "not now" rather than "not this input": the call is retried, then released.
OUTAGE_STATUSES = frozenset({502, 503, 504, 429})
OUTAGE_EXCEPTIONS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.RemoteProtocolError,  # the server dropped the connection (crash, restart)
    httpx.ReadError,
    httpx.WriteError,
)


COMPUTE_HEADER = "x-compute-seconds"  # model_servers/compute.py


class ComputeUsage:
    """One attempt's model-server slot seconds: every call's ``X-Compute-Seconds`` (retried
    calls and error answers included), and what a processor reads from a streamed body
    (``TaskContext.report_compute_s``). Sent with the attempt's complete or fail."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0

    def add(self, value: object) -> None:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return  # a server that does not report (or garbles it) adds nothing
        if math.isfinite(seconds) and seconds > 0:
            self.seconds += seconds


class _Outage(Exception):
    """One failed try that another try may fix; tenacity retries on it."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class HealthSnapshot:
    healthy: bool = False
    status: str = "unknown"
    message: str = "not checked yet"
    capacity: int = 1
    others_in_flight: int = 0  # calls on the server that are not ours, when it was checked
    checked_at: float = float("-inf")


class Endpoint:
    """One model server URL: its own AsyncClient, circuit breaker, last health and our load on it."""

    def __init__(self, url: str, breaker: CircuitBreaker, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.breaker = breaker
        self.health = HealthSnapshot()
        self.in_flight = 0  # our calls on it right now
        self.full_of_others = 0  # consecutive /health answers that found it full of others' calls
        self.client = httpx.AsyncClient(
            base_url=self.url,
            # Few, quick resends: tenacity's tries above this layer may move to another server.
            # aiohttp under the httpx API, as the task API client: about 0.6 ms less CPU per
            # call than httpcore here (bench/consumer_bench.py), with the same exception mapping.
            transport=connect_retry_transport(transport or ApiTransport(), total=2, backoff_factor=0.1),
            timeout=httpx.Timeout(120.0, connect=CONNECT_TIMEOUT_S),
            trust_env=False,
            event_hooks={"request": [stamp_context_headers]},
        )

    def usable(self) -> bool:
        return self.breaker.closed and self.health.healthy

    def load(self) -> float:
        return (self.in_flight + self.health.others_in_flight) / max(1, self.health.capacity)

    def check_due_at(self, ttl_s: float) -> float:
        """When its last /health answer goes stale: after the TTL, sooner while others' calls fill it."""
        if self.full_of_others:
            return self.health.checked_at + min(ttl_s, BUSY_RECHECK_S * 2 ** (self.full_of_others - 1))
        return self.health.checked_at + ttl_s


class ModelServerPool:
    """All servers of one kind. ``client(timeout_s)`` gives what ``ctx.model_server`` is."""

    def __init__(
        self,
        kind: str,
        urls: list[str],
        *,
        health_ttl_s: float = 2.0,
        breaker_failures: int = 3,
        breaker_reset_s: float = 5.0,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if not urls:
            raise ValueError(f"model server kind {kind!r} has no URLs")
        self.kind = kind
        self.health_ttl_s = health_ttl_s
        self.connect_timeout_s = connect_timeout_s
        self.metrics = metrics
        self.endpoints = [
            Endpoint(u, CircuitBreaker(breaker_failures, breaker_reset_s), transport) for u in urls
        ]
        self._refreshing: asyncio.Task | None = None
        if metrics is not None:
            metrics.watch_pool(self)

    def client(self, timeout_s: float = 120.0, usage: ComputeUsage | None = None) -> "ModelServerClient":
        return ModelServerClient(self, timeout_s, usage)

    async def aclose(self) -> None:
        for ep in self.endpoints:
            await ep.client.aclose()

    # -- health -----------------------------------------------------------------------------

    async def refresh(self, force: bool = False) -> None:
        """Re-check every server whose health is older than the TTL; concurrent callers share one round."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_all(force))
        await asyncio.shield(self._refreshing)

    async def _refresh_all(self, force: bool) -> None:
        now = time.monotonic()
        due = [
            ep for ep in self.endpoints
            if (force or now >= ep.check_due_at(self.health_ttl_s)) and ep.breaker.probe_due
        ]
        await asyncio.gather(*(self._check(ep) for ep in due))

    async def _check(self, ep: Endpoint) -> None:
        in_flight_before = ep.in_flight
        try:
            response = await ep.client.get(
                "/health", timeout=httpx.Timeout(HEALTH_TIMEOUT_S, connect=min(HEALTH_TIMEOUT_S, self.connect_timeout_s))
            )
            body = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as exc:
            ep.health = HealthSnapshot(False, "unreachable", str(exc) or type(exc).__name__, checked_at=time.monotonic())
            ep.full_of_others = 0
            ep.breaker.record_failure()
            self.observe_circuit(ep)
            return
        status = body.get("status", f"http_{response.status_code}") if isinstance(body, dict) else "invalid"
        if response.status_code != 200 or not isinstance(body, dict):
            ep.health = HealthSnapshot(False, status, f"/health answered {response.status_code}", checked_at=time.monotonic())
            ep.full_of_others = 0
            if response.status_code >= 500:
                ep.breaker.record_failure()
            self.observe_circuit(ep)
            return
        capacity = int(body.get("capacity") or 1)
        reported = int(body.get("in_flight") or 0)
        # The server counts our calls too; what is left over is other consumers' load.
        ep.health = HealthSnapshot(
            healthy=status == "healthy",
            status=status,
            message=str(body.get("message", "")),
            capacity=max(1, capacity),
            others_in_flight=max(0, reported - max(in_flight_before, ep.in_flight)),
            checked_at=time.monotonic(),
        )
        full = ep.health.healthy and ep.health.others_in_flight >= ep.health.capacity
        ep.full_of_others = ep.full_of_others + 1 if full else 0
        # A /health answer is the half-open probe: it closes the circuit (a "loading" server still
        # gets no calls until it reports healthy). It does not wipe the failure count of a closed
        # circuit, though: a server can say "healthy" and answer every call 503.
        if not ep.breaker.closed:
            ep.breaker.record_success()
        self.observe_circuit(ep)

    def observe_circuit(self, ep: Endpoint) -> None:
        """Show ``ep``'s circuit state on the metrics gauge (after each success or failure it records)."""
        if self.metrics is not None:
            self.metrics.circuit_state.labels(self.kind, ep.url).set(int(ep.breaker.state))

    def free_slots(self, our_tasks: int) -> int:
        """How many more tasks needing this kind may be leased now (from the last health answers)."""
        usable = [ep for ep in self.endpoints if ep.usable()]
        free = sum(ep.health.capacity - ep.health.others_in_flight for ep in usable) - our_tasks
        free = max(0, free)
        if self.metrics is not None:
            self.metrics.model_capacity.labels(self.kind).set(free)
        return free

    def busy_recheck_in(self) -> float | None:
        """Seconds until a server found full of others' calls is to be asked again; None if none is."""
        # An open circuit is probed on the breaker's schedule instead, however full it was.
        due = [ep.check_due_at(self.health_ttl_s) for ep in self.endpoints if ep.full_of_others and ep.breaker.closed]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "url": ep.url, "status": ep.health.status, "circuit": CircuitState(ep.breaker.state).name.lower(),
                "in_flight": ep.in_flight, "capacity": ep.health.capacity,
            }
            for ep in self.endpoints
        ]

    async def choose(self) -> Endpoint:
        """The least-loaded usable server; re-checks health first when no answer is fresh enough."""
        now = time.monotonic()
        # The runtime refreshes health in the background every half TTL; a call only waits for a
        # check itself when those answers have gone stale (no background loop, or it is stuck).
        if any(now - ep.health.checked_at >= 2 * self.health_ttl_s for ep in self.endpoints):
            await self.refresh()
        usable = [ep for ep in self.endpoints if ep.usable()]
        if not usable:
            states = ", ".join(f"{ep.url}: {ep.health.status} ({ep.health.message})" for ep in self.endpoints)
            raise _Outage(f"no healthy {self.kind} model server ({states})")
        # Ties go to the server with fewer recent failures, so a retry moves off a flaky one.
        return min(usable, key=lambda ep: (ep.load(), ep.breaker.failures))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class ModelServerClient:
    """``ctx.model_server``: plain ``request`` / ``stream`` calls with the fleet's failure rules."""

    def __init__(self, pool: ModelServerPool, timeout_s: float, usage: ComputeUsage | None = None) -> None:
        self.pool = pool
        self.kind = pool.kind
        self.timeout = httpx.Timeout(timeout_s, connect=min(pool.connect_timeout_s, timeout_s))
        self.usage = usage if usage is not None else ComputeUsage()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call, its response read whole; raises on anything but 2xx (see module doc)."""
        return await self._call(method, path, stream=False, **kwargs)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """A call whose body is read as it arrives (``response.aiter_bytes()``), for large outputs.

        Retries cover getting the response headers; once the body flows, a broken stream raises
        ``ModelServerUnavailable`` (so the task is released and redone, never half-written).
        """
        response = await self._call(method, path, stream=True, **kwargs)
        ep: Endpoint = response.extensions["taskfleet_endpoint"]
        try:
            yield response
        except OUTAGE_EXCEPTIONS as exc:
            raise ModelServerUnavailable(f"{self.kind} stream broke: {exc!r}", kind=self.kind) from exc
        except httpx.ReadTimeout as exc:
            raise ModelServerTimeout(f"{self.kind} stream stalled: {exc!r}") from exc
        finally:
            ep.in_flight -= 1
            await response.aclose()

    async def _call(self, method: str, path: str, *, stream: bool, **kwargs: Any) -> httpx.Response:
        timeout = kwargs.get("timeout", self.timeout)
        if isinstance(timeout, (int, float)):
            # A bare number would stretch the connect timeout too, and a dead server must be noticed fast.
            timeout = httpx.Timeout(timeout, connect=min(self.pool.connect_timeout_s, timeout))
        kwargs["timeout"] = timeout
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(CALL_ATTEMPTS),
                wait=wait_exponential(multiplier=0.25, min=0.25, max=4),
                retry=retry_if_exception_type(_Outage),
                reraise=True,
            ):
                with attempt:
                    return await self._try_once(method, path, stream, kwargs)
        except _Outage as exc:
            raise ModelServerUnavailable(
                f"{self.kind} model server unavailable after {CALL_ATTEMPTS} tries: {exc}",
                kind=self.kind,
                retry_after_s=exc.retry_after_s,
            ) from None
        raise AssertionError("unreachable")

    async def _try_once(self, method: str, path: str, stream: bool, kwargs: dict[str, Any]) -> httpx.Response:
        pool = self.pool
        ep = await pool.choose()
        ep.in_flight += 1
        started = time.perf_counter()
        outcome = "error"
        held = False
        try:
            try:
                request = ep.client.build_request(method, path, **kwargs)
                response = await ep.client.send(request, stream=stream)
            except OUTAGE_EXCEPTIONS as exc:
                outcome = "outage"
                ep.breaker.record_failure()
                pool.observe_circuit(ep)
                raise _Outage(f"{ep.url}: {type(exc).__name__}: {exc}") from exc
            except httpx.TimeoutException as exc:
                # The server took the request and is still on it: not an outage, and resending would
                # run the model twice at once. Fail the attempt; the task's retry policy decides.
                outcome = "timeout"
                raise ModelServerTimeout(f"{ep.url}{path} did not answer within {self.timeout.read}s") from exc

            # Every answer's slot seconds count, an error's too: the device was used either way.
            if (compute := response.headers.get(COMPUTE_HEADER)) is not None:
                self.usage.add(compute)
            if response.is_success:
                outcome = "ok"
                ep.breaker.record_success()
                pool.observe_circuit(ep)
                if stream:
                    # The call goes on while the body streams; stream() gives the slot back on close.
                    response.extensions["taskfleet_endpoint"] = ep
                    held = True
                return response
            if stream:
                await response.aread()
                await response.aclose()
            code, message = parse_error_body(
                response.text, response.status_code, fallback_prefix=f"{self.kind}_http", max_text=300
            )
            if response.status_code in OUTAGE_STATUSES:
                outcome = "outage"
                if response.status_code != 429:  # 429 is "full", not "broken"
                    ep.breaker.record_failure()
                    pool.observe_circuit(ep)
                raise _Outage(f"{ep.url} answered {response.status_code} {code}: {message}", _retry_after(response))
            outcome = f"http_{response.status_code}"
            if 400 <= response.status_code < 500:
                raise ModelServerError(message or code, code=code, status=422, retryable=False)
            raise ModelServerError(message or code, code=code, status=502, retryable=True)
        finally:
            if not held:
                ep.in_flight -= 1
            if pool.metrics is not None:
                pool.metrics.model_call_seconds.labels(self.kind, ep.url, outcome).observe(
                    time.perf_counter() - started
                )
