"""The seed-style alias ``POST /api/{route}/create-task`` carries the task options of /api/tasks
(priority, webhook_url, idempotency key, ...) beside the workflow's input fields, over real HTTP
on both databases."""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx
import pytest

from webhook_receiver import Receiver, wait_for, webhook_api_env

SECRET = "alias-hook-secret"


@pytest.fixture
def api_env():
    return webhook_api_env(SECRET)


@pytest.fixture
async def http(api):
    async with httpx.AsyncClient(base_url=api.url, trust_env=False, timeout=30) as client:
        yield client


async def test_alias_options_are_task_settings_not_input(http, producer):
    body = {"data": {"n": 1}, "sleep_s": 0, "priority": 7, "max_attempts": 5, "timeout_s": 42.5,
            "metadata": {"order": "A-17"}}  # fmt: skip
    created = await http.post("/api/echo/create-task", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "PENDING"
    task = await producer.get(created.json()["task_id"])
    assert task["input"] == {"data": {"n": 1}, "sleep_s": 0.0, "fail": None}
    assert (task["priority"], task["max_attempts"], task["timeout_s"]) == (7, 5, 42.5)
    assert task["metadata"] == {"order": "A-17"}


async def test_alias_idempotency_key_in_body_or_header_replays_the_first_task(http, producer):
    first = await http.post("/api/echo/create-task", json={"data": "once", "idempotency_key": "order-1"})
    assert first.status_code == 201, first.text
    again = await http.post("/api/echo/create-task", json={"data": "once", "idempotency_key": "order-1"})
    assert again.status_code == 200 and again.json() == first.json()
    other = await http.post("/api/echo/create-task", json={"data": "twice", "idempotency_key": "order-1"})
    assert other.status_code == 409 and other.json()["error"]["code"]

    by_header = await http.post("/api/echo/create-task", json={"data": "h"}, headers={"Idempotency-Key": "order-2"})
    assert by_header.status_code == 201, by_header.text
    replay = await http.post("/api/echo/create-task", json={"data": "h"}, headers={"Idempotency-Key": "order-2"})
    assert replay.status_code == 200 and replay.json()["task_id"] == by_header.json()["task_id"]
    # The alias stands for the /api/tasks body with the same content: one task for either route.
    same = await producer.submit("echo", {"data": "h"}, idempotency_key="order-2")
    assert same["task_id"] == by_header.json()["task_id"]
    assert [t["task_id"] for t in (await producer.list(workflow="echo"))["items"]].count(same["task_id"]) == 1

    bad = await http.post("/api/echo/create-task", json={"data": 1}, headers={"Idempotency-Key": "k" * 201})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == ["header", "idempotency-key"]


async def test_alias_priority_orders_the_queue(http, consumer):
    ids = {}
    for name, priority in (("low", -5), ("plain", None), ("high", 9)):
        body = {"data": name} | ({"priority": priority} if priority is not None else {})
        reply = await http.post("/api/echo/create-task", json=body)
        assert reply.status_code == 201, reply.text
        ids[reply.json()["task_id"]] = name
    leased = await consumer.fetch(["echo"], limit=3, wait_s=1)
    assert [ids[t["task_id"]] for t in leased] == ["high", "plain", "low"]
    bad = await http.post("/api/echo/create-task", json={"data": 1, "priority": 10_000})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == ["body", "priority"]


async def test_alias_webhook_is_delivered_signed(http, consumer):
    with Receiver() as receiver:
        reply = await http.post("/api/echo/create-task", json={"data": "hooked", "webhook_url": receiver.url})
        assert reply.status_code == 201, reply.text
        [leased] = await consumer.fetch(["echo"], wait_s=1)
        assert leased["task_id"] == reply.json()["task_id"] and leased["webhook_url"] == receiver.url
        await consumer.complete(leased["task_id"], leased["lease"]["id"], {"data": "hooked"})
        await wait_for(lambda: len(receiver.received) >= 1)
    _, body, headers = receiver.received[0]
    assert headers["x-taskfleet-signature"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    payload = json.loads(body)
    assert (payload["task_id"], payload["status"], payload["output"]) == (
        reply.json()["task_id"],
        "COMPLETED",
        {"data": "hooked"},
    )
