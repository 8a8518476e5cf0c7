"""Webhooks on terminal states: signed, retried on failure, guarded, and surviving an API restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest

from support import api_process, free_port
from webhook_receiver import Receiver, wait_for, webhook_api_env

SECRET = "hook-secret"


@pytest.fixture
def api_env():
    return webhook_api_env(SECRET)


async def test_signed_webhook_on_completion_with_retries(api, producer, consumer):
    with Receiver(fail_first=2) as receiver:
        task = await producer.submit("echo", {"data": 1}, webhook_url=receiver.url)
        [t] = await consumer.fetch(["echo"], wait_s=1)
        await consumer.complete(t["task_id"], t["lease"]["id"], {"data": 1})
        await wait_for(lambda: len(receiver.received) >= 3)
        await asyncio.sleep(0.8)
        assert len(receiver.received) == 3  # two failures retried, then delivered once
        times = [r[0] for r in receiver.received]
        assert times[1] - times[0] >= 0.3 and times[2] - times[1] >= 0.6
        _, body, headers = receiver.received[-1]
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-taskfleet-signature"] == expected
        payload = json.loads(body)
        assert payload["task_id"] == task["task_id"] and payload["status"] == "COMPLETED"


async def test_webhook_for_tasks_completed_in_a_batch(api, producer, consumer):
    """The consumer runtime completes through the batch route: its completions send webhooks
    too, once per task that has one."""
    with Receiver() as receiver:
        hooked = await producer.submit("echo", {"data": "hooked"}, webhook_url=receiver.url)
        await producer.submit("echo", {"data": "plain"})
        leased = await consumer.fetch(["echo"], limit=2, wait_s=1)
        results = await consumer.complete_many([(t["task_id"], t["lease"]["id"], t["input"]) for t in leased])
        assert [r["status"] for r in results] == ["COMPLETED", "COMPLETED"]
        await wait_for(lambda: len(receiver.received) >= 1)
        await asyncio.sleep(0.5)
        assert [json.loads(r[1])["task_id"] for r in receiver.received] == [hooked["task_id"]]


async def test_webhook_gives_up_after_three_retries(api, producer, consumer):
    with Receiver(fail_first=100) as receiver:
        await producer.submit("echo", {}, webhook_url=receiver.url)
        [t] = await consumer.fetch(["echo"], wait_s=1)
        await consumer.fail(t["task_id"], t["lease"]["id"], "bad", "x", False)
        await wait_for(lambda: len(receiver.received) >= 4)
        await asyncio.sleep(2.0)
        assert len(receiver.received) == 4  # the first try and 3 retries


async def test_webhook_to_private_address_is_refused(database_url, tmp_path):
    with Receiver() as receiver:
        # No allow-list: loopback is a private address, so nothing may be sent there.
        env = {"TASKFLEET_WEBHOOK_RETRY_DELAYS": "0.1,0.1,0.1", "TASKFLEET_REAP_INTERVAL_S": "0.2"}
        with api_process(database_url, tmp_path, **env) as server:
            from taskfleet.client import ConsumerClient, ProducerClient

            async with ProducerClient(server.url) as p, ConsumerClient(server.url) as c:
                await p.submit("echo", {}, webhook_url=receiver.url)
                [t] = await c.fetch(["echo"], wait_s=1)
                await c.complete(t["task_id"], t["lease"]["id"], {})
                await asyncio.sleep(1.5)
        assert receiver.received == []


async def test_pending_delivery_survives_api_restart(database_url, tmp_path, api_env):
    port = free_port()
    hook_port = free_port()
    env = {**api_env, "TASKFLEET_WEBHOOK_RETRY_DELAYS": "1,1,1"}
    from taskfleet.client import ConsumerClient, ProducerClient

    server = api_process(database_url, tmp_path, port=port, **env).start()
    async with ProducerClient(server.url) as p, ConsumerClient(server.url) as c:
        task = await p.submit("echo", {}, webhook_url=f"http://127.0.0.1:{hook_port}/hook")
        [t] = await c.fetch(["echo"], wait_s=1)
        await c.complete(t["task_id"], t["lease"]["id"], {})
    await asyncio.sleep(0.3)  # the first try fails: nobody listens yet
    server.kill()
    with Receiver(port=hook_port) as receiver:
        with api_process(database_url, tmp_path, port=port, **env):
            await wait_for(lambda: len(receiver.received) >= 1)
        assert json.loads(receiver.received[0][1])["task_id"] == task["task_id"]
