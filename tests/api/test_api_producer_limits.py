"""Per-producer create rates and pending quotas (CONTRACT §9) through real API processes: on
SQLite and on Postgres, and across two replicas of one Postgres, where the limit is the fleet's."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from support import api_process, postgres_database

TOKENS = {"web": "web-secret", "batch": "batch-secret", "free": "free-secret", "consumer": "cons-secret"}
ENV = {
    "TASKFLEET_PRODUCER_TOKENS": ",".join(f"{name}:{TOKENS[name]}" for name in ("web", "batch", "free")),
    "TASKFLEET_CONSUMER_TOKENS": TOKENS["consumer"],
    # web: one create every 5 s (a bucket of 1); batch: at most 3 PENDING at a time
    "TASKFLEET_PRODUCER_RATE": "web:0.2",
    "TASKFLEET_PRODUCER_MAX_PENDING": "batch:3",
    "TASKFLEET_LEASE_S": "30",
}


@pytest.fixture
def api_env():
    return ENV


def client(url: str, producer: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[producer]}"}, timeout=30)


def task(data, **extra) -> dict:
    return {"workflow": "echo", "input": {"data": data}, **extra}


def refused(response: httpx.Response, code: str) -> float:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == code
    return float(response.headers["Retry-After"])


async def pending_of(url: str, producer: str) -> int:
    async with client(url, producer) as c:
        listed = (await c.get("/api/tasks", params={"producer": producer, "status": "PENDING", "limit": 100})).json()
        return len(listed["items"])


async def test_a_rate_limited_producer_is_told_when_to_come_back(api):
    async with client(api.url, "web") as web, client(api.url, "free") as free:
        assert (await web.post("/api/tasks", json=task(1))).status_code == 201
        wait = refused(await web.post("/api/tasks", json=task(2)), "rate_limited")
        assert 1 <= wait <= 5
        refused(await web.post("/api/echo/create-task", json={"data": 3}), "rate_limited")  # the alias too
        # a producer without a rate is not held back by web's
        for i in range(5):
            assert (await free.post("/api/tasks", json=task(i))).status_code == 201
        assert await pending_of(api.url, "web") == 1  # refused creates made nothing


async def test_a_batch_counts_each_task_against_the_rate(api):
    async with client(api.url, "web") as web:
        # from a full bucket a batch bigger than the burst passes, and leaves the bucket in debt
        created = await web.post("/api/tasks/batch", json={"tasks": [task(i) for i in range(3)]})
        assert created.status_code == 201, created.text
        wait = refused(await web.post("/api/tasks", json=task("next")), "rate_limited")
        assert wait >= 10  # three tokens owed at 0.2 a second: well beyond one task's 5 s
        assert await pending_of(api.url, "web") == 3


async def test_the_pending_quota_counts_each_task_and_frees_as_tasks_run(api):
    async with client(api.url, "batch") as batch, httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {TOKENS['consumer']}"}, timeout=30
    ) as consumer:
        assert (await batch.post("/api/tasks", json=task(1))).status_code == 201
        kept = await batch.post("/api/tasks", json=task(2, idempotency_key="k2"))
        assert kept.status_code == 201
        # a batch of two with one place left: refused whole, nothing inserted
        refused(await batch.post("/api/tasks/batch", json={"tasks": [task(3), task(4)]}), "quota_exceeded")
        assert await pending_of(api.url, "batch") == 2
        assert (await batch.post("/api/tasks", json=task(3))).status_code == 201
        refused(await batch.post("/api/tasks", json=task(4)), "quota_exceeded")
        # a resent create of a task that exists is not a new task: it gets its task back
        again = await batch.post("/api/tasks", json=task(2, idempotency_key="k2"))
        assert again.status_code == 200 and again.json()["task_id"] == kept.json()["task_id"]
        # once a consumer takes one, there is room for one more
        fetched = await consumer.get("/api/comm/task/fetch", params={"consumer_id": "c1", "wait_s": 5})
        assert fetched.status_code == 200
        assert (await batch.post("/api/tasks", json=task(5))).status_code == 201
        refused(await batch.post("/api/tasks", json=task(6)), "quota_exceeded")


async def test_limits_are_the_fleets_across_replicas(tmp_path):
    env = {**ENV, "TASKFLEET_PRODUCER_MAX_PENDING": "batch:10"}
    with postgres_database() as url, api_process(url, tmp_path, **env) as a, api_process(url, tmp_path, **env) as b:
        async with client(a.url, "web") as web_a, client(b.url, "web") as web_b:
            assert (await web_a.post("/api/tasks", json=task(1))).status_code == 201
            refused(await web_b.post("/api/tasks", json=task(2)), "rate_limited")  # B sees A's token spent
        async with client(a.url, "batch") as batch_a, client(b.url, "batch") as batch_b:
            # 40 creates at once, half on each replica, against a quota of 10: exactly 10 pass
            answers = await asyncio.gather(
                *((batch_a if i % 2 else batch_b).post("/api/tasks", json=task(i)) for i in range(40))
            )
            codes = sorted(r.status_code for r in answers)
            assert codes == [201] * 10 + [429] * 30
            assert {r.json()["error"]["code"] for r in answers if r.status_code == 429} == {"quota_exceeded"}
        assert await pending_of(a.url, "batch") == 10
