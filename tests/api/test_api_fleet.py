"""The consumer registry (reports, GET /api/consumers) and GET /api/stats, on both databases."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from support import api_process, postgres_database
from taskfleet.client import ConsumerClient, ProducerClient

TOKENS = {"TASKFLEET_PRODUCER_TOKENS": "ptok", "TASKFLEET_CONSUMER_TOKENS": "ctok", "TASKFLEET_ADMIN_TOKENS": "atok"}
ADMIN = {"Authorization": "Bearer atok"}


def servers(in_flight: int) -> list[dict]:
    return [{"url": "http://gpu-1:8101", "workflow": "flux", "status": "healthy", "circuit": "closed",
             "in_flight": in_flight, "capacity": 2}]  # fmt: skip


async def test_reports_list_the_live_consumers_with_their_model_servers(database_url, tmp_path):
    with api_process(database_url, tmp_path, TASKFLEET_CONSUMER_TTL_S="1", **TOKENS) as api:
        async with ConsumerClient(api.url, "ctok", consumer_id="c1", host="gpu-1") as c1, \
                httpx.AsyncClient(base_url=api.url) as http:  # fmt: skip
            every = await c1.report({"workflows": ["image_gen"], "concurrency": 4, "in_flight": 0, "model_servers": servers(0)})
            assert every == 5.0  # the API's TASKFLEET_CONSUMER_REPORT_S
            await c1.report({"workflows": ["image_gen"], "concurrency": 4, "in_flight": 2, "model_servers": servers(2)})

            listed = (await http.get("/api/consumers", headers=ADMIN)).json()["consumers"]
            assert len(listed) == 1
            (one,) = listed
            assert one["consumer_id"] == "c1" and one["host"] == "gpu-1" and one["workflows"] == ["image_gen"]
            assert one["concurrency"] == 4 and one["in_flight"] == 2  # the latest report, one row
            assert one["model_servers"] == servers(2)
            assert one["last_seen"].endswith("Z") and one["started_at"] <= one["last_seen"]

            # Admin only: a consumer or producer token may not read the fleet.
            assert (await http.get("/api/consumers", headers={"Authorization": "Bearer ctok"})).status_code == 403
            assert (await http.get("/api/stats", headers={"Authorization": "Bearer ptok"})).status_code == 403
            assert (await http.get("/api/consumers")).status_code == 401
            # Reporting takes a consumer token.
            bad = await http.post("/api/comm/consumers/report", headers={"Authorization": "Bearer ptok"},
                                  json={"consumer_id": "x", "concurrency": 1, "in_flight": 0})  # fmt: skip
            assert bad.status_code == 403

            # A consumer that falls silent drops out once its TTL (1 s here) has passed.
            deadline = time.monotonic() + 10
            while (await http.get("/api/consumers", headers=ADMIN)).json()["consumers"]:
                assert time.monotonic() < deadline, "a silent consumer is still listed"
                await asyncio.sleep(0.2)


async def test_a_report_is_validated(api):
    async with httpx.AsyncClient(base_url=api.url) as http:
        response = await http.post("/api/comm/consumers/report", json={"consumer_id": "", "concurrency": -1, "in_flight": 0})
    assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error"


async def test_every_replica_lists_what_a_consumer_reported_to_another(tmp_path):
    with postgres_database() as url, api_process(url, tmp_path) as a, api_process(url, tmp_path) as b:
        async with ConsumerClient(a.url, consumer_id="on-a", host="h") as consumer, httpx.AsyncClient() as http:
            await consumer.report({"workflows": ["echo"], "concurrency": 1, "in_flight": 0, "model_servers": []})
            listed = (await http.get(f"{b.url}/api/consumers")).json()["consumers"]
    assert [c["consumer_id"] for c in listed] == ["on-a"]


async def test_stats_count_open_and_finished_tasks_per_workflow(api, producer, consumer):
    ids = [(await producer.submit("echo", {"data": i}))["task_id"] for i in range(5)]
    done = await consumer.fetch(["echo"], limit=3, wait_s=5)
    assert len(done) == 3
    await consumer.complete(done[0]["task_id"], done[0]["lease"]["id"], {})
    await consumer.complete(done[1]["task_id"], done[1]["lease"]["id"], {})
    await consumer.fail(done[2]["task_id"], done[2]["lease"]["id"], "bad", "bad input", retryable=False)
    assert len(await consumer.fetch(["echo"], limit=1, wait_s=5)) == 1  # one left PROCESSING

    async with httpx.AsyncClient(base_url=api.url) as http:
        body = (await http.get("/api/stats")).json()
    by_name = {w["workflow"]: w for w in body["workflows"]}
    assert "image_gen" in by_name and by_name["image_gen"]["pending"] == 0  # every workflow, idle ones too
    echo = by_name["echo"]
    assert (echo["pending"], echo["processing"]) == (1, 1)
    assert (echo["completed_5m"], echo["failed_5m"], echo["completed_1h"], echo["failed_1h"]) == (2, 1, 2, 1)
    assert echo["completed_per_min_5m"] == pytest.approx(2 / 5)
    assert echo["oldest_pending_age_s"] > 0
    assert 0 <= echo["wait_s"]["p50"] <= echo["wait_s"]["p95"] and 0 <= echo["run_s"]["p50"] <= echo["run_s"]["p95"]
    assert by_name["image_gen"]["wait_s"] == {"p50": None, "p95": None}
    assert len(ids) == 5
