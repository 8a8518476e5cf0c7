"""Pipelines advance exactly once: concurrent sibling completions on two API replicas sharing one
Postgres, and an API killed (SIGKILL) in the middle of many pipelines run by real consumers."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from support import api_process, consumer_process, free_port, postgres_database
from task_api.store import SqliteStore
from taskfleet.client import ConsumerClient, ProducerClient

WIDE = """
name: wide
stages:
  - {name: first, workflow: echo, input: {data: "{{ input.words }}"}}
  - {name: each, workflow: echo, map: "{{ stages.first.output.data }}", input: {data: "{{ item }}", sleep_s: 0.02}}
  - {name: side, workflow: echo, after: [first], input: {data: side}}
  - {name: last, workflow: echo, after: [each, side], input: {data: "{{ stages.each.outputs }}"}}
output: "{{ stages.last.output.data }}"
"""
EXPECTED_STAGE_TASKS = {"first": 1, "side": 1, "last": 1}  # and "each": one per word


@pytest.fixture
def pipelines_dir(tmp_path):
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "wide.yaml").write_text(WIDE)
    return folder


def check_rows(rows: list[dict], pipelines: dict[str, list[str]]) -> None:
    """Every pipeline has each stage's tasks exactly once, each completed by one attempt."""
    per_stage: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        per_stage.setdefault((r["parent_id"], r["stage"]), []).append(r)
    for pipeline_id, words in pipelines.items():
        for stage, n in {**EXPECTED_STAGE_TASKS, "each": len(words)}.items():
            got = per_stage.get((pipeline_id, stage), [])
            assert len(got) == n, (pipeline_id, stage, len(got))
            assert all(r["status"] == "COMPLETED" for r in got)
        assert sorted(r["item_index"] for r in per_stage[(pipeline_id, "each")]) == list(range(len(words)))


async def test_sibling_completions_on_two_replicas_advance_each_pipeline_exactly_once(tmp_path, pipelines_dir):
    env = {"TASKFLEET_REAP_INTERVAL_S": "0.5", "TASKFLEET_LEASE_S": "30", "TASKFLEET_PIPELINES_DIR": str(pipelines_dir)}
    with postgres_database() as url, api_process(url, tmp_path, **env) as a, api_process(url, tmp_path, **env) as b:
        async with ProducerClient(a.url) as producer:
            pipelines: dict[str, list[str]] = {}
            for p in range(8):
                words = [f"w{p}-{i}" for i in range(40)]
                created = await producer.submit("wide", {"words": words}, webhook_url="https://hooks.example/p")
                pipelines[created["task_id"]] = words

            completions = 0

            async def work(api_url: str, n: int) -> None:
                nonlocal completions
                async with ConsumerClient(api_url, consumer_id=f"c{n}") as c:
                    idle_until = time.monotonic() + 3
                    while time.monotonic() < idle_until:
                        tasks = await c.fetch(["echo"], limit=8, wait_s=0.3)
                        if not tasks:
                            continue
                        idle_until = time.monotonic() + 3
                        # the whole batch at once, as consumers send it: siblings of one map
                        # complete together on both replicas
                        results = await c.complete_many([(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]}) for t in tasks])
                        assert all(r.get("status") == "COMPLETED" for r in results), results
                        completions += len(tasks)

            await asyncio.gather(*(work(u, n) for n, u in enumerate([a.url, b.url] * 4)))
            for pipeline_id, words in pipelines.items():
                done = await producer.get(pipeline_id)
                assert done["status"] == "COMPLETED", done["error"]
                assert done["output"] == [{"data": w} for w in words]  # item order
            assert completions == sum(len(w) + 3 for w in pipelines.values())

        conn = await asyncpg.connect(url)
        try:
            rows = [dict(r) for r in await conn.fetch("SELECT parent_id, stage, item_index, status FROM tasks WHERE parent_id IS NOT NULL")]
            hooks = [r["task_id"] for r in await conn.fetch("SELECT task_id FROM webhook_deliveries")]
        finally:
            await conn.close()
        check_rows(rows, pipelines)
        assert sorted(hooks) == sorted(pipelines)  # one webhook per pipeline, none for stage tasks


async def test_an_api_killed_mid_pipelines_loses_no_stage_and_repeats_none(database_url, tmp_path, pipelines_dir):
    port = free_port()
    env = {"TASKFLEET_REAP_INTERVAL_S": "0.2", "TASKFLEET_LEASE_S": "10", "TASKFLEET_PIPELINES_DIR": str(pipelines_dir)}
    consumers = [
        consumer_process(f"http://127.0.0.1:{port}", tmp_path, "echo", TASKFLEET_CONSUMER_ID=f"c{n}",
                         TASKFLEET_CONCURRENCY="8", TASKFLEET_OUTAGE_BACKOFF_MAX_S="0.5")  # fmt: skip
        for n in range(2)
    ]
    api = api_process(database_url, tmp_path, port=port, **env).start()
    try:
        for c in consumers:
            c.start()
        async with ProducerClient(api.url) as producer:
            pipelines: dict[str, list[str]] = {}
            for p in range(20):
                words = [f"{p}.{i}" for i in range(12)]
                pipelines[(await producer.submit("wide", {"words": words}))["task_id"]] = words
            # kill it once some pipelines have moved on and others have not
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                page = await producer.list(workflow="wide", status="COMPLETED", limit=20)
                if page["items"]:
                    break
                await asyncio.sleep(0.05)
            finished_before = len((await producer.list(workflow="wide", status="COMPLETED", limit=20))["items"])
        api.kill()
        assert 0 < finished_before < len(pipelines)  # the kill came in the middle
        api = api_process(database_url, tmp_path, port=port, **env).start()
        async with ProducerClient(api.url) as producer:
            for pipeline_id, words in pipelines.items():
                done = await producer.wait(pipeline_id, timeout=120, poll_s=0.2)
                assert done["status"] == "COMPLETED", done["error"]
                assert done["output"] == [{"data": w} for w in words]
    finally:
        api.terminate()
        for c in consumers:
            c.terminate()

    if database_url.startswith("sqlite"):
        db = SqliteStore(database_url)
        await db.connect()
        try:
            rows = await db.fetch("SELECT parent_id, stage, item_index, status FROM tasks WHERE parent_id IS NOT NULL")
        finally:
            await db.close()
    else:
        conn = await asyncpg.connect(database_url)
        try:
            rows = [dict(r) for r in await conn.fetch("SELECT parent_id, stage, item_index, status FROM tasks WHERE parent_id IS NOT NULL")]
        finally:
            await conn.close()
    check_rows(rows, pipelines)
