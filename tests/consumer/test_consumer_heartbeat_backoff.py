"""A consumer's heartbeats through a database restart: a 503 is retried soon, backing off, and
never later than the regular schedule; the lease is kept and the schedule resumes after."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from consumer import attempts as attempts_module
from consumer.attempts import Attempts, Running
from taskfleet.client import ConsumerClient

UNAVAILABLE = {"error": {"code": "database_unavailable", "message": "the database is restarting"}}


async def test_a_503_heartbeat_is_retried_with_backoff_and_the_lease_kept(monkeypatch: pytest.MonkeyPatch):
    answers = [503, 503, 503, 200, 200]
    calls: list[int] = []

    def api(request: httpx.Request) -> httpx.Response:
        status = answers[len(calls)]
        calls.append(status)
        if status == 503:
            return httpx.Response(503, json=UNAVAILABLE, headers={"Retry-After": "1"})
        expires = (datetime.now(timezone.utc) + timedelta(seconds=6)).isoformat()
        last = len(calls) == len(answers)  # the API ends the test with a cancel
        return httpx.Response(200, json={"lease_expires_at": expires, "cancel_requested": last})

    # The waits the loop asks for are recorded and cut short: its schedule, without waiting it out.
    asked: list[float] = []
    real_wait_for = asyncio.wait_for

    async def recorded_wait_for(awaitable, timeout):
        asked.append(timeout)
        return await real_wait_for(awaitable, 0)

    monkeypatch.setattr(attempts_module.asyncio, "wait_for", recorded_wait_for)
    running = Running({"task_id": "tsk_1", "workflow": "echo"}, None, "lease_1")
    async with ConsumerClient("http://api.test", transport=httpx.MockTransport(api)) as client:
        owner = Attempts.__new__(Attempts)
        owner.client = client
        await Attempts._heartbeat_loop(owner, running, 6.0, time.monotonic())  # interval: 2 s

    assert calls == answers
    assert running.stop_reason == "cancelled" and running.cancel_requested  # the 503s did not end the attempt
    interval = 2.0
    expected = [interval, 0.5, 1.0, interval, interval]  # regular, then 0.5 s doubling (capped), regular again
    assert [round(t, 1) for t in asked] == expected
