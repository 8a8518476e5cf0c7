"""Named producers (CONTRACT §9) through a real API process on SQLite and on Postgres: each
task names the producer whose token created it, stage tasks their pipeline's, and the task list
filters by it."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskfleet.client import ConsumerClient, ProducerClient

TOKENS = {"web": "web-secret", "batch": "batch-secret", "bare": "bare-secret", "admin": "admin-secret",
          "consumer": "cons-secret"}  # fmt: skip
PIPELINE = """
name: two_steps
stages:
  - {name: first, workflow: echo, input: {data: [1, 2]}}
  - {name: second, workflow: echo, map: "{{ stages.first.output.data }}", input: {data: "{{ item }}"}}
"""


@pytest.fixture
def pipelines_dir(tmp_path) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "two_steps.yaml").write_text(PIPELINE)
    return folder


@pytest.fixture
def api_env(pipelines_dir):
    return {
        "TASKFLEET_PRODUCER_TOKENS": f"web:{TOKENS['web']},batch:{TOKENS['batch']},{TOKENS['bare']}",
        "TASKFLEET_CONSUMER_TOKENS": TOKENS["consumer"],
        "TASKFLEET_ADMIN_TOKENS": TOKENS["admin"],
        "TASKFLEET_PIPELINES_DIR": str(pipelines_dir),
    }


async def test_each_task_names_the_producer_of_its_token(api):
    async with (
        ProducerClient(api.url, TOKENS["web"]) as web,
        ProducerClient(api.url, TOKENS["batch"]) as batch,
        ProducerClient(api.url, TOKENS["bare"]) as bare,
        ProducerClient(api.url, TOKENS["admin"]) as admin,
    ):
        by_web = await web.submit("echo", {"data": 1})
        by_batch = await batch.submit_many([{"workflow": "echo", "input": {"data": i}} for i in range(3)])
        by_alias = (await batch._call("POST", "/api/echo/create-task", json={"data": 2})).json()
        by_bare = await bare.submit("echo", {"data": 3})
        by_admin = await admin.submit("echo", {"data": 4})
        assert by_web["producer"] == "web"
        assert [t["producer"] for t in by_batch] == ["batch"] * 3
        assert (await web.get(by_alias["task_id"]))["producer"] == "batch"
        assert by_bare["producer"] == "default"
        assert by_admin["producer"] == "admin"
        assert (await batch.get(by_web["task_id"]))["producer"] == "web"  # stored, not the reader's

        # the filter, alone, with status, with workflow, and paged with a cursor
        listed = await admin.list(producer="batch", limit=2)
        ids = [t["task_id"] for t in listed["items"]]
        rest = await admin.list(producer="batch", limit=2, cursor=listed["next_cursor"])
        ids += [t["task_id"] for t in rest["items"]]
        assert ids == [by_alias["task_id"]] + [t["task_id"] for t in reversed(by_batch)]
        assert rest["next_cursor"] is None
        assert [t["task_id"] for t in (await admin.list(producer="web", status="PENDING"))["items"]] == [by_web["task_id"]]
        assert (await admin.list(producer="web", status="COMPLETED"))["items"] == []
        assert len((await admin.list(producer="batch", workflow="echo", status="PENDING"))["items"]) == 4
        assert (await admin.list(producer="nobody"))["items"] == []


async def test_stage_tasks_inherit_their_pipelines_producer(api):
    async with (
        ProducerClient(api.url, TOKENS["web"]) as web,
        ConsumerClient(api.url, TOKENS["consumer"], consumer_id="c1") as consumer,
    ):
        pipeline = await web.submit("two_steps", {})
        assert pipeline["producer"] == "web"
        (first,) = await consumer.fetch(["echo"], limit=1, wait_s=5)
        assert first["parent_id"] == pipeline["task_id"] and first["producer"] == "web"
        await consumer.complete(first["task_id"], first["lease"]["id"], {"data": [1, 2]})
        mapped = await consumer.fetch(["echo"], limit=2, wait_s=5)
        assert len(mapped) == 2 and {t["producer"] for t in mapped} == {"web"}
