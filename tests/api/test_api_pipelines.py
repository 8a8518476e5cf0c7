"""Pipelines through a real API process on SQLite and on Postgres: stage tasks are fetched and
completed here by hand, so each test decides the order things happen in."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support import ROOT
from taskfleet.client import ConsumerClient
from taskfleet.errors import Conflict

DEFINITIONS = {
    # a chain with a fan-out between two single stages; stage settings and typed templates
    "chain.yaml": """
name: chain
route: chain-route
input:
  type: object
  required: [words]
  properties:
    words: {type: array}
    n: {type: integer}
stages:
  - name: first
    workflow: echo
    input: {data: "{{ input.words }}"}
  - name: each
    workflow: echo
    map: "{{ stages.first.output.data }}"
    input: {data: {word: "{{ item }}", at: "{{ index }}", label: "word {{ index }} is {{ item }}"}}
    max_attempts: 1
  - name: last
    workflow: echo
    input: {data: "{{ stages.each.outputs }}"}
output: {result: "{{ stages.last.output.data }}", n: "{{ input.n }}"}
""",
    # two branches that start at once, joined by a third stage
    "branches.yaml": """
name: branches
stages:
  - {name: left, workflow: echo, after: [], input: {data: L}}
  - {name: right, workflow: echo, after: [], input: {data: R}}
  - {name: join, workflow: echo, after: [left, right],
     input: {data: ["{{ stages.left.output.data }}", "{{ stages.right.output.data }}"]}}
""",
    # a stage whose path only resolves when the input has it
    "fragile.yaml": """
name: fragile
stages:
  - {name: first, workflow: echo, input: {data: "{{ input.x }}"}}
  - {name: second, workflow: echo, input: {data: "{{ stages.first.output.data.deep }}"}}
""",
    # a stage that times out fast
    "slow.yaml": """
name: slow
stages:
  - {name: only, workflow: echo, input: {data: 1}, timeout_s: 0.5, max_attempts: 1}
""",
}


@pytest.fixture
def pipelines_dir(tmp_path) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for name, text in DEFINITIONS.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def api_env(pipelines_dir):
    return {"TASKFLEET_LEASE_S": "30", "TASKFLEET_REAP_INTERVAL_S": "0.2", "TASKFLEET_PIPELINES_DIR": str(pipelines_dir),
            "TASKFLEET_MAX_FANOUT": "5"}  # fmt: skip


async def take(consumer: ConsumerClient, n: int, *, workflow: str = "echo", wait_s: float = 5) -> list[dict]:
    """Fetch exactly n stage tasks (fewer would fail the test)."""
    got: list[dict] = []
    while len(got) < n:
        tasks = await consumer.fetch([workflow], limit=n - len(got), wait_s=wait_s)
        assert tasks, f"only {len(got)} of {n} tasks came"
        got.extend(tasks)
    return got


async def run_one(consumer: ConsumerClient, stage: str) -> dict:
    (task,) = await take(consumer, 1)
    assert task["stage"] == stage
    await consumer.complete(task["task_id"], task["lease"]["id"], {"data": task["input"]["data"]})
    return task


async def test_fan_out_fan_in_keeps_item_order_and_json_types(api, producer, consumer):
    created = await producer.submit("chain", {"words": ["a", "b", "c"], "n": 7}, priority=5)
    assert created["status"] == "PROCESSING" and created["parent_id"] is None
    first = await run_one(consumer, "first")
    assert first["parent_id"] == created["task_id"] and first["index"] is None and first["priority"] == 5
    assert first["input"]["data"] == ["a", "b", "c"]  # a list stays a list

    each = await take(consumer, 3)
    assert sorted(t["index"] for t in each) == [0, 1, 2] and {t["stage"] for t in each} == {"each"}
    assert all(t["max_attempts"] == 1 and t["priority"] == 5 for t in each)
    by_index = {t["index"]: t for t in each}
    assert by_index[1]["input"]["data"] == {"word": "b", "at": 1, "label": "word 1 is b"}
    progress = []
    # completed in reverse item order, partly through the batch route the consumers use
    await consumer.complete(by_index[2]["task_id"], by_index[2]["lease"]["id"], {"data": "C"})
    progress.append((await producer.get(created["task_id"]))["progress"]["percent"])
    await consumer.complete_many([(by_index[i]["task_id"], by_index[i]["lease"]["id"], {"data": w}) for i, w in ((1, "B"), (0, "A"))])
    progress.append((await producer.get(created["task_id"]))["progress"]["percent"])

    last = await run_one(consumer, "last")
    assert last["input"]["data"] == [{"data": "A"}, {"data": "B"}, {"data": "C"}]
    done = await producer.get(created["task_id"])
    assert done["status"] == "COMPLETED" and done["progress"]["percent"] == 100
    assert done["output"] == {"result": [{"data": "A"}, {"data": "B"}, {"data": "C"}], "n": 7}
    assert progress[0] < progress[1] < 100
    assert [(s["name"], s["status"], s["completed"], s["total"]) for s in done["stages"]] == [
        ("first", "COMPLETED", 1, 1), ("each", "COMPLETED", 3, 3), ("last", "COMPLETED", 1, 1)]  # fmt: skip
    assert done["stages"][1]["task_ids"] == [by_index[i]["task_id"] for i in range(3)]

    # stage tasks are listed under their own workflow; the pipeline under its name
    listed = await producer.list(workflow="echo")
    assert {t["task_id"] for t in listed["items"]} >= {first["task_id"], last["task_id"]}
    assert [t["task_id"] for t in (await producer.list(workflow="chain"))["items"]] == [created["task_id"]]
    async with httpx.AsyncClient(base_url=api.url) as client:
        metrics = (await client.get("/metrics")).text
    assert 'taskfleet_tasks{status="COMPLETED",workflow="echo"} 5.0' in metrics
    assert 'taskfleet_tasks{status="COMPLETED",workflow="chain"} 1.0' in metrics


async def test_parallel_branches_start_at_once_and_join(producer, consumer):
    created = await producer.submit("branches", {})
    both = await take(consumer, 2)
    assert {t["stage"] for t in both} == {"left", "right"}
    view = (await producer.get(created["task_id"]))["stages"]
    assert [(s["name"], s["status"]) for s in view] == [("left", "PROCESSING"), ("right", "PROCESSING"), ("join", "PENDING")]
    for t in both:
        await consumer.complete(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]})
    join = await run_one(consumer, "join")
    assert join["input"]["data"] == ["L", "R"]
    assert (await producer.get(created["task_id"]))["status"] == "COMPLETED"


async def test_the_pipeline_task_itself_is_never_handed_to_a_consumer(producer, consumer):
    created = await producer.submit("chain", {"words": []})
    tasks = await consumer.fetch(None, limit=10, wait_s=1)  # any workflow
    assert [t["stage"] for t in tasks] == ["first"] and created["task_id"] not in {t["task_id"] for t in tasks}


async def test_a_batch_create_takes_pipelines_beside_plain_tasks(producer, consumer):
    pipeline, plain = await producer.submit_many([{"workflow": "branches", "input": {}}, {"workflow": "echo", "input": {}}])
    assert (pipeline["status"], plain["status"]) == ("PROCESSING", "PENDING")
    fetched = await take(consumer, 3)
    assert sorted((t["parent_id"] or "", t["stage"] or "") for t in fetched) == sorted(
        [("", ""), (pipeline["task_id"], "left"), (pipeline["task_id"], "right")])  # fmt: skip


async def test_a_map_over_nothing_completes_its_stage_at_once(producer, consumer):
    created = await producer.submit("chain", {"words": [], "n": 1})
    await run_one(consumer, "first")
    last = await run_one(consumer, "last")
    assert last["input"]["data"] == []
    done = await producer.get(created["task_id"])
    assert done["status"] == "COMPLETED" and done["output"] == {"result": [], "n": 1}
    assert done["stages"][1] == {"name": "each", "status": "COMPLETED", "task_ids": [], "completed": 0, "total": 0}


async def test_more_items_than_the_fanout_limit_fails_the_pipeline(producer, consumer):
    created = await producer.submit("chain", {"words": list("abcdef"), "n": 1})  # limit is 5 here
    await run_one(consumer, "first")
    failed = await producer.get(created["task_id"])
    assert failed["status"] == "FAILED" and failed["error"]["code"] == "fanout_too_large"
    assert failed["error"]["stage"] == "each" and failed["error"]["items"] == 6
    assert await consumer.fetch(["echo"], wait_s=0.3) == []  # no item task was created


async def test_a_path_that_does_not_resolve_fails_with_template_error(producer, consumer):
    missing_input = await producer.submit("fragile", {})
    failed = await producer.get(missing_input["task_id"])
    assert failed["status"] == "FAILED" and failed["error"]["code"] == "template_error"
    assert failed["error"]["stage"] == "first" and failed["error"]["path"] == "input.x"

    created = await producer.submit("fragile", {"x": "flat"})
    await run_one(consumer, "first")
    failed = await producer.get(created["task_id"])
    assert failed["error"]["code"] == "template_error" and failed["error"]["path"] == "stages.first.output.data.deep"
    assert failed["error"]["stage"] == "second"


async def test_input_is_checked_against_the_pipeline_schema(api):
    async with httpx.AsyncClient(base_url=api.url) as client:
        r = await client.post("/api/tasks", json={"workflow": "chain", "input": {"words": "not a list"}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
        r = await client.post("/api/tasks", json={"workflow": "chain", "input": {}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"


async def test_a_failed_stage_task_fails_the_pipeline_and_retry_runs_only_what_did_not_complete(producer, consumer):
    created = await producer.submit("chain", {"words": ["a", "b", "c"], "n": 0}, webhook_url="http://127.0.0.1:9/hook")
    await run_one(consumer, "first")
    each = {t["index"]: t for t in await take(consumer, 3)}
    await consumer.complete(each[0]["task_id"], each[0]["lease"]["id"], {"data": "A"})
    await consumer.fail(each[1]["task_id"], each[1]["lease"]["id"], "boom", "it broke", retryable=True)
    failed = await producer.get(created["task_id"])
    assert failed["status"] == "FAILED"  # max_attempts 1 for this stage: the retryable failure was its last
    error = failed["error"]
    assert (error["code"], error["stage"], error["task_id"]) == ("stage_failed", "each", each[1]["task_id"])
    assert error["cause"]["code"] == "boom"
    sibling = await producer.get(each[2]["task_id"])
    assert sibling["status"] == "PROCESSING" and sibling["cancel_requested"]  # told at its next heartbeat
    assert (await consumer.heartbeat(each[2]["task_id"], each[2]["lease"]["id"]))["cancel_requested"]
    assert (await producer.get(each[2]["task_id"]))["status"] == "CANCELLED"
    assert (await producer.get(created["task_id"]))["error"]["code"] == "stage_failed"  # unchanged by that end

    retried = await producer.retry(created["task_id"])
    assert retried["status"] == "PROCESSING" and retried["error"] is None
    again = {t["index"]: t for t in await take(consumer, 2)}
    assert {i: t["task_id"] for i, t in again.items()} == {1: each[1]["task_id"], 2: each[2]["task_id"]}
    kept = await producer.get(each[0]["task_id"])
    assert kept["status"] == "COMPLETED" and kept["output"] == {"data": "A"} and len(kept["history"]) == 1
    await consumer.complete_many([(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]["word"].upper()}) for t in again.values()])
    last = await run_one(consumer, "last")
    assert [o["data"] for o in last["input"]["data"]] == ["A", "B", "C"]
    final = await producer.get(created["task_id"])
    assert final["status"] == "COMPLETED", final["error"]
    with pytest.raises(Conflict):  # a stage task is retried through its pipeline
        await producer.retry(each[1]["task_id"])


async def test_cancel_cascades_to_unfinished_stage_tasks(producer, consumer):
    created = await producer.submit("branches", {})
    left, right = sorted(await take(consumer, 2), key=lambda t: t["stage"])
    await consumer.complete(left["task_id"], left["lease"]["id"], {"data": "L"})
    cancelled = await producer.cancel(created["task_id"])
    assert cancelled["status"] == "CANCELLED"
    assert (await producer.get(left["task_id"]))["status"] == "COMPLETED"
    assert (await consumer.heartbeat(right["task_id"], right["lease"]["id"]))["cancel_requested"]
    assert (await producer.get(right["task_id"]))["status"] == "CANCELLED"
    assert await consumer.fetch(["echo"], wait_s=0.3) == []  # join never started
    view = (await producer.get(created["task_id"]))["stages"]
    assert [s["status"] for s in view] == ["COMPLETED", "CANCELLED", "PENDING"]

    retried = await producer.retry(created["task_id"])  # the cancelled branch runs again, then the join
    assert retried["status"] == "PROCESSING"
    await run_one(consumer, "right")
    await run_one(consumer, "join")
    assert (await producer.get(created["task_id"]))["status"] == "COMPLETED"


async def test_a_stage_task_past_its_timeout_fails_the_pipeline(producer, consumer):
    created = await producer.submit("slow", {})
    (task,) = await take(consumer, 1)
    done = await producer.wait(created["task_id"], timeout=15, poll_s=0.1)
    assert done["status"] == "FAILED" and done["error"]["code"] == "stage_failed"
    assert done["error"]["cause"]["code"] == "timed_out" and done["error"]["task_id"] == task["task_id"]


async def test_idempotency_keys_route_alias_and_process_work_as_for_any_workflow(api, producer, consumer):
    body = {"workflow": "chain", "input": {"words": ["x"], "n": 2}, "idempotency_key": "k1"}
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        first = await client.post("/api/tasks", json=body)
        again = await client.post("/api/tasks", json=body)
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["task_id"] == again.json()["task_id"]
        other = await client.post("/api/tasks", json={**body, "input": {"words": ["y"]}})
        assert other.status_code == 409
        for _ in range(3):  # the keyed pipeline's stages, once
            (t,) = await take(consumer, 1)
            await consumer.complete(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]})

        alias = await client.post("/api/chain-route/create-task", json={"words": ["y"], "n": 3})
        assert alias.status_code == 201 and alias.json()["status"] == "PROCESSING"
        assert (await client.get(f"/api/tasks/{alias.json()['task_id']}")).json()["workflow"] == "chain"

        async def work() -> None:
            async with ConsumerClient(api.url, consumer_id="worker") as worker:
                while tasks := await worker.fetch(["echo"], limit=4, wait_s=2):
                    for t in tasks:
                        await worker.complete(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]})

        worker = asyncio.create_task(work())
        answer = await client.post("/api/chain-route/process", params={"wait_s": 20}, json={"words": ["p", "q"], "n": 4})
        assert answer.status_code == 200
        assert answer.json() == {"result": [{"data": {"word": w, "at": i, "label": f"word {i} is {w}"}} for i, w in enumerate("pq")], "n": 4}
        await worker


BAD_FILES = [
    ("syntax.yaml", "name: x\nstages: [\n", "not valid YAML"),
    ("unknown_workflow.yaml", "name: x\nstages:\n  - {name: a, workflow: nope}\n", "unknown workflow 'nope'"),
    ("unknown_stage.yaml", "name: x\nstages:\n  - {name: a, workflow: echo, after: [b]}\n", "which is not a stage"),
    ("cycle.yaml", "name: x\nstages:\n  - {name: a, workflow: echo, after: [b]}\n  - {name: b, workflow: echo}\n",
     "cycle"),
    ("template.yaml", "name: x\nstages:\n  - {name: a, workflow: echo, input: {data: '{{ input.x() }}'}}\n",
     "bad template"),
]  # fmt: skip


@pytest.mark.parametrize(("filename", "text", "fault"), BAD_FILES, ids=[f for f, _, _ in BAD_FILES])
def test_a_bad_definition_stops_the_api_start_with_one_line(tmp_path, filename, text, fault):
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / filename).write_text(text)
    env = {"TASKFLEET_PIPELINES_DIR": str(folder), "TASKFLEET_DATABASE_URL": f"sqlite:///{tmp_path}/t.db",
           "TASKFLEET_STORAGE_URL": f"file://{tmp_path}/storage", "PATH": os.environ.get("PATH", ""),
           "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "taskfleet", "api", "--port", "1"], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder / filename) in lines[0] and fault in lines[0], result.stderr
