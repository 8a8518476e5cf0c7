"""End to end: a real task API, real consumer processes, fake model servers as real uvicorn apps."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from taskfleet.client import ProducerClient

pytestmark = pytest.mark.timeout(120)


async def wait_status(client: ProducerClient, task_id: str, statuses: set[str], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = await client.get(task_id)
        if task["status"] in statuses:
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {task['status']}: {task}")
        await asyncio.sleep(0.05)


async def test_echo_end_to_end(stack, log_dir):
    stack.consumer()
    async with ProducerClient(stack.url) as client:
        ok = await client.submit("echo", {"data": {"hello": [1, 2, 3]}})
        fatal = await client.submit("echo", {"data": 1, "fail": "fatal"})
        retryable = await client.submit("echo", {"data": 1, "fail": "retryable"}, max_attempts=2)
        done = await client.wait(ok["task_id"], timeout=30)
        assert done["status"] == "COMPLETED", stack.logs()
        assert done["output"] == {"data": {"hello": [1, 2, 3]}}
        assert done["consumer_id"] == "consumer0"
        failed = await client.wait(fatal["task_id"], timeout=30)
        assert failed["status"] == "FAILED"
        assert failed["error"]["code"] == "echo_fatal"
        assert failed["attempts"] == 1  # non-retryable: not tried again
        failed = await client.wait(retryable["task_id"], timeout=30)
        assert failed["status"] == "FAILED"
        assert failed["error"]["code"] == "echo_retryable"
        assert failed["attempts"] == 2  # retried up to max_attempts
