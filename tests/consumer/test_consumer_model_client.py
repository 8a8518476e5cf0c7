"""The model-server pool against fake model servers (real uvicorn processes on loopback)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from consumer.circuit import CircuitBreaker, CircuitState
from consumer.errors import ModelServerError, ModelServerTimeout, ModelServerUnavailable
from consumer.metrics import Metrics
from consumer.model_client import HealthSnapshot, ModelServerPool


def make_pool(*servers, **kw) -> ModelServerPool:
    kw.setdefault("health_ttl_s", 0.2)
    kw.setdefault("breaker_failures", 3)
    kw.setdefault("breaker_reset_s", 0.3)
    return ModelServerPool("fake", [s.url if hasattr(s, "url") else s for s in servers], **kw)


@pytest.fixture
async def pools():
    made: list[ModelServerPool] = []

    def make(*servers, **kw):
        pool = make_pool(*servers, **kw)
        made.append(pool)
        return pool

    yield make
    for p in made:
        await p.aclose()


async def test_call_and_capacity(fake_servers, pools):
    server = fake_servers(capacity=2)
    pool = pools(server)
    await pool.refresh()
    assert pool.free_slots(our_tasks=0) == 2
    assert pool.free_slots(our_tasks=1) == 1
    response = await pool.client(10).request("POST", "/process", json={"text": "hi"})
    assert response.json()["fields"] == {"text": "hi"}


async def test_concurrent_calls_spread_by_load(fake_servers, pools):
    a, b = fake_servers(), fake_servers()
    a.control(delay_s=0.5)
    b.control(delay_s=0.5)
    client = pools(a, b).client(10)
    await asyncio.gather(*(client.request("POST", "/process", json={}) for _ in range(2)))
    assert (a.stats()["calls"], b.stats()["calls"]) == (1, 1)


async def test_503_retried_then_unavailable_and_circuit_opens(fake_servers, pools):
    server = fake_servers()
    server.control("503")
    pool = pools(server)
    with pytest.raises(ModelServerUnavailable) as info:
        await pool.client(10).request("POST", "/process", json={})
    assert info.value.retryable and info.value.kind == "fake"
    assert server.stats()["calls"] == 3  # tenacity: three tries
    assert pool.endpoints[0].breaker.state is CircuitState.OPEN
    assert pool.free_slots(0) == 0  # nothing is fetched for this kind while its circuit is open
    # The server recovers; after the reset time a health probe closes the circuit.
    server.control("ok")
    await asyncio.sleep(0.35)
    await pool.refresh(force=True)
    assert pool.endpoints[0].breaker.state is CircuitState.CLOSED
    assert (await pool.client(10).request("POST", "/process", json={})).status_code == 200


async def test_4xx_fails_once_with_the_servers_code(fake_servers, pools):
    server = fake_servers()
    server.control("4xx")
    with pytest.raises(ModelServerError) as info:
        await pools(server).client(10).request("POST", "/process", json={})
    assert (info.value.code, info.value.retryable, info.value.status) == ("no_face", False, 422)
    assert server.stats()["calls"] == 1


async def test_500_is_a_retryable_task_failure_not_an_outage(fake_servers, pools):
    server = fake_servers()
    server.control("500")
    pool = pools(server)
    with pytest.raises(ModelServerError) as info:
        await pool.client(10).request("POST", "/process", json={})
    assert (info.value.code, info.value.retryable) == ("model_crashed", True)
    assert server.stats()["calls"] == 1
    assert pool.endpoints[0].breaker.closed


async def test_dropped_connection_moves_to_another_server(fake_servers, pools):
    flaky, good = fake_servers(), fake_servers()
    flaky.control("drop")
    pool = pools(flaky, good)
    results = [await pool.client(10).request("POST", "/process", json={}) for _ in range(3)]
    assert all(r.status_code == 200 for r in results)
    assert flaky.stats()["calls"] == 1  # after one drop the tie-break prefers the other server
    assert good.stats()["completed"] == 3


async def test_dropped_connections_everywhere_end_in_unavailable(fake_servers, pools):
    server = fake_servers()
    server.control("drop")
    with pytest.raises(ModelServerUnavailable):
        await pools(server).client(10).request("POST", "/process", json={})
    assert server.stats()["calls"] == 3


async def test_server_down_then_back(fake_servers, pools):
    server = fake_servers()
    pool = pools(server)
    await pool.refresh()
    assert pool.free_slots(0) == 1
    server.stop()
    with pytest.raises(ModelServerUnavailable):
        await pool.client(10).request("POST", "/process", json={})
    await pool.refresh(force=True)
    assert pool.free_slots(0) == 0
    server.start()  # same port
    deadline = asyncio.get_running_loop().time() + 10
    while pool.free_slots(0) == 0:
        assert asyncio.get_running_loop().time() < deadline, pool.describe()
        await asyncio.sleep(0.1)
        await pool.refresh()
    assert (await pool.client(10).request("POST", "/process", json={})).status_code == 200


async def test_unhealthy_server_gets_no_calls(fake_servers, pools):
    server = fake_servers()
    server.control("unhealthy")
    pool = pools(server)
    await pool.refresh()
    assert pool.free_slots(0) == 0
    with pytest.raises(ModelServerUnavailable):
        await pool.client(10).request("POST", "/process", json={})
    assert server.stats()["calls"] == 0


async def test_read_timeout_is_not_retried(fake_servers, pools):
    server = fake_servers()
    server.control(delay_s=2)
    with pytest.raises(ModelServerTimeout) as info:
        await pools(server).client(0.5).request("POST", "/process", json={})
    assert info.value.retryable
    assert server.stats()["calls"] == 1  # resending would run the model twice at once


async def test_stream_reads_body_in_chunks(fake_servers, pools):
    server = fake_servers()
    pool = pools(server)
    async with pool.client(10).stream("GET", "/stream", params={"n": 4, "size": 1024}) as response:
        assert pool.endpoints[0].in_flight == 1  # the slot is held while the body flows
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert body == b"z" * 4096
    assert pool.endpoints[0].in_flight == 0


async def test_connection_refused_is_resent_at_the_transport():
    calls = {"process": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "healthy", "capacity": 1, "in_flight": 0})
        calls["process"] += 1
        if calls["process"] == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"ok": True})

    pool = ModelServerPool("fake", ["http://model.test"], transport=httpx.MockTransport(handler))
    response = await pool.client(10).request("POST", "/process", json={})
    assert response.json() == {"ok": True}
    assert calls["process"] == 2
    assert pool.endpoints[0].breaker.failures == 0  # the transport absorbed it; the call succeeded
    await pool.aclose()


async def test_metrics_record_calls_and_circuit(fake_servers, pools):
    server = fake_servers()
    metrics = Metrics()
    pool = pools(server, metrics=metrics)
    await pool.client(10).request("POST", "/process", json={})
    server.control("503")
    with pytest.raises(ModelServerUnavailable):
        await pool.client(10).request("POST", "/process", json={})
    r = metrics.registry
    assert r.get_sample_value(
        "taskfleet_consumer_model_call_seconds_count", {"kind": "fake", "server": server.url, "outcome": "ok"}
    ) == 1
    assert r.get_sample_value(
        "taskfleet_consumer_model_call_seconds_count", {"kind": "fake", "server": server.url, "outcome": "outage"}
    ) == 3
    assert r.get_sample_value("taskfleet_consumer_circuit_state", {"kind": "fake", "server": server.url}) == 1


def test_circuit_breaker_states():
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_s=1.0, max_reset_s=3.0, clock=lambda: now[0])
    breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN and not breaker.probe_due
    now[0] = 1.0
    assert breaker.state is CircuitState.HALF_OPEN and breaker.probe_due
    breaker.record_failure()  # the probe failed: open again, for twice as long
    now[0] = 2.5
    assert breaker.state is CircuitState.OPEN
    now[0] = 3.0
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED and breaker.failures == 0


async def test_connect_timeout_is_an_outage():
    """A server that never accepts the connection (SYNs dropped: a full listen backlog)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the backlog; later SYNs get no answer
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    pool = ModelServerPool("fake", [f"http://127.0.0.1:{port}"], connect_timeout_s=0.2, health_ttl_s=60)
    ep = pool.endpoints[0]
    ep.health = HealthSnapshot(healthy=True, status="healthy", capacity=1, checked_at=time.monotonic())
    try:
        with pytest.raises(ModelServerUnavailable) as info:
            await pool.client(10).request("POST", "/process", json={})
        assert "ConnectTimeout" in info.value.message
        assert ep.breaker.state is CircuitState.OPEN
    finally:
        await pool.aclose()
        for s in fillers:
            s.close()
        listener.close()


async def test_unhealthy_server_skipped_for_a_healthy_one(fake_servers, pools):
    sick, well = fake_servers(), fake_servers(capacity=3)
    sick.control("unhealthy")
    pool = pools(sick, well)
    await pool.refresh()
    assert pool.free_slots(0) == 3  # only the healthy server's capacity counts
    for _ in range(3):
        await pool.client(10).request("POST", "/process", json={})
    assert (sick.stats()["calls"], well.stats()["calls"]) == (0, 3)


async def test_compute_seconds_add_up_over_calls_retries_and_error_answers():
    """Each answer's X-Compute-Seconds goes on the attempt's usage: a 503 that held a slot
    before giving up, its retry, a 4xx; a missing or garbled header adds nothing."""
    from consumer.model_client import ComputeUsage

    answers = iter([
        httpx.Response(503, headers={"X-Compute-Seconds": "0.25"}, json={"error": {"code": "busy", "message": ""}}),
        httpx.Response(200, headers={"X-Compute-Seconds": "0.5"}, json={}),
        httpx.Response(200, json={}),  # a server that does not report
        httpx.Response(200, headers={"X-Compute-Seconds": "nan"}, json={}),
        httpx.Response(422, headers={"X-Compute-Seconds": "0.125"}, json={"error": {"code": "no_face", "message": ""}}),
    ])  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "healthy", "capacity": 1})
        return next(answers)

    pool = make_pool("http://fake", transport=httpx.MockTransport(handler))
    usage = ComputeUsage()
    try:
        client = pool.client(10, usage)
        await client.request("POST", "/process", json={})  # 503, then its retry's 200
        assert usage.seconds == 0.75
        await client.request("POST", "/process", json={})
        await client.request("POST", "/process", json={})
        assert usage.seconds == 0.75
        with pytest.raises(ModelServerError):
            await client.request("POST", "/process", json={})
        assert usage.seconds == 0.875
    finally:
        await pool.aclose()


async def test_a_server_full_of_others_calls_is_asked_again_soon_not_after_the_ttl(fake_servers, pools):
    from consumer.model_client import BUSY_RECHECK_S

    server = fake_servers(capacity=1)
    pool = pools(server, health_ttl_s=60.0)  # the TTL alone would not look again within the test
    await pool.refresh()
    assert pool.free_slots(our_tasks=0) == 1 and pool.busy_recheck_in() is None
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as other:
        # Another client's call fills the server (a direct caller, another consumer).
        call = asyncio.ensure_future(other.post("/process", json={"sleep_s": 1.0}))
        while server.stats()["active"] == 0:
            await asyncio.sleep(0.01)
        await pool.refresh(force=True)
        assert pool.free_slots(our_tasks=0) == 0
        delays = []
        for _ in range(3):  # still full: each re-check comes twice as late as the one before
            delays.append(pool.busy_recheck_in())
            await asyncio.sleep(delays[-1])
            checked = pool.endpoints[0].health.checked_at
            await pool.refresh()
            assert pool.endpoints[0].health.checked_at > checked  # it was due, though the TTL was not
            if server.stats()["active"] == 0:
                break
        assert delays[0] <= BUSY_RECHECK_S and all(b > a for a, b in zip(delays, delays[1:]))
        assert (await call).status_code == 200
    await asyncio.sleep(pool.busy_recheck_in() or 0)
    await pool.refresh()
    assert pool.free_slots(our_tasks=0) == 1  # its room is seen again soon after the call ended
    assert pool.busy_recheck_in() is None  # and the TTL rules again
