"""End to end: a real task API, real consumer processes, fake model servers as real uvicorn apps."""

from __future__ import annotations

import asyncio
import json
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


def task_dirs(stack) -> list:
    """Attempt folders inside the running consumers' own scratch folders."""
    return [d for own in stack.work_root.iterdir() if own.is_dir() for d in own.iterdir()]


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
    assert task_dirs(stack) == []  # every task's temp directory is gone


def fake_env(*servers, **extra):
    env = {
        "TASKFLEET_WORKFLOWS": "fake_model",
        "TASKFLEET_MODEL_SERVER_URLS": {"fake": [s.url for s in servers]},
    }
    env.update(extra)
    return env


def outcomes(task: dict) -> list[str | None]:
    return [entry["outcome"] for entry in task["history"]]


async def test_plugin_workflow_end_to_end(stack, fake_servers):
    """fake_model comes from a separately installed package (entry points only), runs on a fake
    model server, and its output exists in storage under {workflow}/{task_id}/{name}."""
    server = fake_servers()
    stack.consumer(**fake_env(server))
    async with ProducerClient(stack.url) as client:
        task = await client.submit("fake_model", {"text": "hello"})
        done = await client.wait(task["task_id"], timeout=30)
    assert done["status"] == "COMPLETED", stack.logs()
    out = done["output"]
    assert out["text"] == "hello" and out["attempt"] == 1
    stored = Path(out["result_storage_url"].removeprefix("file://"))
    assert stored == stack.storage_root / "fake_model" / task["task_id"] / "result.json"
    assert stored.exists()
    assert httpx.get(out["result_url"]).json()["fields"]["text"] == "hello"  # served by the API
    assert server.stats()["completed"] == 1


async def test_the_built_in_pipeline_answers_process_through_real_consumers(stack):
    stack.consumer()
    stack.consumer()
    async with ProducerClient(stack.url) as client:
        answer = await client.process("echo-fanout", {"words": ["a", "b", "c"]}, wait_s=30)
    assert answer.status_code == 200, stack.logs()
    assert answer.json() == {"words": [{"data": "a"}, {"data": "b"}, {"data": "c"}]}


async def test_a_plugin_pipeline_runs_its_stages_on_real_consumers(stack, fake_servers):
    """plugin_pair comes from the plugin package's taskfleet.pipelines entry point; its stages
    run as ordinary tasks on the consumers that serve their workflows (fake_model, then echo)."""
    server = fake_servers()
    stack.consumer(**fake_env(server, TASKFLEET_WORKFLOWS="fake_model,echo"))
    async with ProducerClient(stack.url) as client:
        task = await client.submit("plugin_pair", {"text": "hi", "tag": "t1"})
        done = await client.wait(task["task_id"], timeout=30)
    assert done["status"] == "COMPLETED", stack.logs()
    assert done["output"]["tag"] == "t1" and done["output"]["model"]["text"] == "hi"
    assert [(s["name"], s["status"]) for s in done["stages"]] == [("model", "COMPLETED"), ("tag", "COMPLETED")]
    assert server.stats()["completed"] == 1


async def test_retried_attempt_overwrites_its_output(stack, fake_servers):
    server = fake_servers()
    stack.consumer(**fake_env(server))
    async with ProducerClient(stack.url) as client:
        task = await client.submit("fake_model", {"text": "again", "fail_attempts": 1}, max_attempts=2)
        done = await client.wait(task["task_id"], timeout=30)
    assert done["status"] == "COMPLETED" and done["attempts"] == 2, stack.logs()
    folder = stack.storage_root / "fake_model" / task["task_id"]
    assert [p.name for p in folder.iterdir()] == ["result.json"]  # one object, not one per attempt
    assert json.loads((folder / "result.json").read_text())["attempt"] == 2


async def test_heartbeats_keep_the_lease_and_carry_progress(stack):
    """The API's lease is 2 s; a 3 s task survives on heartbeats, and its progress shows meanwhile."""
    stack.consumer()
    async with ProducerClient(stack.url) as client:
        task = await client.submit("echo", {"data": 1, "sleep_s": 3})
        seen = set()
        while (current := await client.get(task["task_id"]))["status"] in ("PENDING", "PROCESSING"):
            seen.add(current["progress"]["percent"])
            await asyncio.sleep(0.1)
        detail = await client.get(task["task_id"])
    assert detail["status"] == "COMPLETED", stack.logs()
    assert outcomes(detail) == ["completed"]  # never expired, never taken over
    assert any(0 < p < 100 for p in seen), seen


async def test_input_uploaded_to_api_reaches_model_server(stack, fake_servers, tmp_path):
    server = fake_servers()
    stack.consumer(**fake_env(server))
    src = tmp_path / "face.bin"
    src.write_bytes(b"\x89PNG not really" * 1000)
    async with ProducerClient(stack.url) as client:
        url = await client.upload(str(src))
        task = await client.submit("fake_model", {"text": "x", "source_url": url})
        done = await client.wait(task["task_id"], timeout=30)
    assert done["status"] == "COMPLETED", stack.logs()
    assert done["output"]["files"]["source"]["size"] == src.stat().st_size


async def test_fetches_no_more_than_model_capacity(stack, fake_servers):
    """Capacity 1, concurrency 4: never more than one task leased at a time."""
    server = fake_servers(capacity=1)
    stack.consumer(**fake_env(server, TASKFLEET_CONCURRENCY=4))
    async with ProducerClient(stack.url) as client:
        ids = [(await client.submit("fake_model", {"sleep_s": 0.4}))["task_id"] for _ in range(4)]
        max_processing = 0
        while True:
            listing = await client.list(status="PROCESSING", limit=100)
            max_processing = max(max_processing, len(listing["items"]))
            tasks = [await client.get(i) for i in ids]
            if all(t["status"] == "COMPLETED" for t in tasks):
                break
            assert not any(t["status"] == "FAILED" for t in tasks), stack.logs()
            await asyncio.sleep(0.05)
    assert max_processing == 1
    assert server.stats()["max_concurrent"] == 1


async def test_model_server_outage_releases_tasks_and_none_fail(stack, fake_servers):
    """The server dies under in-flight calls and stays down a while: the leased tasks are released
    (attempt not counted), nothing more is leased while it is down, all complete once it is back."""
    server = fake_servers()
    server.control(delay_s=2)
    consumer = stack.consumer(**fake_env(server, TASKFLEET_CONCURRENCY=3))
    async with ProducerClient(stack.url) as client:
        ids = [(await client.submit("fake_model", {"text": str(i)}, max_attempts=1))["task_id"] for i in range(3)]
        await wait_status(client, ids[0], {"PROCESSING"})
        while server.stats()["active"] == 0:
            await asyncio.sleep(0.05)
        server.stop()  # mid-call: the consumer's connection drops
        await asyncio.sleep(3)
        for task_id in ids:
            task = await client.get(task_id)
            assert task["status"] == "PENDING" and task["attempts"] == 0, task
        assert "released" in outcomes(await client.get(ids[0]))
        server.start()
        done = [await client.wait(i, timeout=30) for i in ids]
        details = [await client.get(i) for i in ids]
    assert [t["status"] for t in done] == ["COMPLETED"] * 3, stack.logs()
    for t in details:
        assert t["attempts"] == 1  # max_attempts=1: any counted failure would have been final
        assert set(outcomes(t)) <= {"released", "completed"}, t["history"]
    metrics = httpx.get(consumer.metrics_url).text
    assert 'outcome="released",workflow="fake_model"}' in metrics
    assert 'outcome="failed",workflow="fake_model"}' not in metrics


async def test_model_server_answering_503_releases_not_fails(stack, fake_servers):
    server = fake_servers()
    server.control("503")
    stack.consumer(**fake_env(server))
    async with ProducerClient(stack.url) as client:
        task = await client.submit("fake_model", {"text": "x"}, max_attempts=1)
        deadline = time.monotonic() + 15
        while server.stats()["calls"] < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        detail = await client.get(task["task_id"])
        assert detail["status"] in ("PENDING", "PROCESSING") and detail["attempts"] == 0, detail
        assert "released" in outcomes(detail), detail
        server.control("ok")
        done = await client.wait(task["task_id"], timeout=30)
    assert done["status"] == "COMPLETED", stack.logs()


async def test_4xx_from_model_server_fails_task_with_its_code(stack, fake_servers):
    server = fake_servers()
    server.control("4xx")
    stack.consumer(**fake_env(server))
    async with ProducerClient(stack.url) as client:
        task = await client.submit("fake_model", {"text": "x"})
        done = await client.wait(task["task_id"], timeout=30)
    assert done["status"] == "FAILED"
    assert done["error"]["code"] == "no_face"
    assert done["attempts"] == 1


async def test_sigkill_mid_task_completes_once_through_another_consumer(stack):
    victim = stack.consumer("victim")
    async with ProducerClient(stack.url) as client:
        task = await client.submit("echo", {"data": "survives", "sleep_s": 1.5})
        await wait_status(client, task["task_id"], {"PROCESSING"})
        victim.signal(signal.SIGKILL)
        victim.wait()
        stack.consumer("rescuer")
        done = await client.wait(task["task_id"], timeout=30)
        detail = await client.get(task["task_id"])
    assert done["status"] == "COMPLETED", stack.logs()
    assert done["output"] == {"data": "survives"}
    assert done["consumer_id"] == "rescuer"
    assert outcomes(detail).count("completed") == 1
    assert outcomes(detail)[0] == "lease_expired"
    assert [h["consumer_id"] for h in detail["history"]] == ["victim", "rescuer"]


async def test_sigterm_drains_in_flight_work_then_exits_0(stack):
    consumer = stack.consumer()
    async with ProducerClient(stack.url) as client:
        task = await client.submit("echo", {"data": 7, "sleep_s": 1.5})
        await wait_status(client, task["task_id"], {"PROCESSING"})
        queued = await client.submit("echo", {"data": 8}, priority=-1)
        consumer.signal(signal.SIGTERM)
        assert consumer.wait(30) == 0, stack.logs()
        done = await client.get(task["task_id"])
        assert done["status"] == "COMPLETED" and done["output"] == {"data": 7}
        # Nothing new was fetched after the signal... unless it was taken before it; either way
        # nothing is left leased to the stopped consumer.
        later = await client.get(queued["task_id"])
        assert later["status"] in ("PENDING", "COMPLETED")


async def test_sigint_releases_what_does_not_finish_within_grace(stack):
    consumer = stack.consumer(TASKFLEET_SHUTDOWN_GRACE_S=0.5)
    async with ProducerClient(stack.url) as client:
        task = await client.submit("echo", {"data": 1, "sleep_s": 30})
        await wait_status(client, task["task_id"], {"PROCESSING"})
        consumer.signal(signal.SIGINT)
        assert consumer.wait(30) == 0, stack.logs()
        detail = await client.get(task["task_id"])
    assert detail["status"] == "PENDING" and detail["attempts"] == 0, detail
    assert outcomes(detail) == ["released"]
    assert list(stack.work_root.iterdir()) == []  # its temp directory is gone too


async def test_cancel_mid_task(stack):
    stack.consumer(TASKFLEET_CONCURRENCY=1)
    async with ProducerClient(stack.url) as client:
        task = await client.submit("echo", {"data": 1, "sleep_s": 60})
        await wait_status(client, task["task_id"], {"PROCESSING"})
        await client.cancel(task["task_id"])
        cancelled = await wait_status(client, task["task_id"], {"CANCELLED", "COMPLETED", "FAILED"}, timeout=10)
        assert cancelled["status"] == "CANCELLED"
        # The one slot is free again: the processor really stopped.
        follow = await client.submit("echo", {"data": 2})
        assert (await client.wait(follow["task_id"], timeout=15))["status"] == "COMPLETED", stack.logs()
    assert task_dirs(stack) == []


async def test_timeout_s_enforced(stack):
    stack.consumer(TASKFLEET_CONCURRENCY=1)
    async with ProducerClient(stack.url) as client:
        task = await client.submit("echo", {"data": 1, "sleep_s": 60}, timeout_s=1, max_attempts=1)
        done = await client.wait(task["task_id"], timeout=20)
        follow = await client.submit("echo", {"data": 2})
        assert (await client.wait(follow["task_id"], timeout=15))["status"] == "COMPLETED"
    assert done["status"] == "FAILED"
    assert done["error"]["code"] == "timed_out"


SSRF_INPUTS = {
    "http://169.254.169.254/latest/meta-data/": "url_private_address",
    "http://[::ffff:127.0.0.1]:8000/": "url_private_address",
    "http://2130706433:8000/": "url_private_address",
    "file:///etc/passwd": "url_outside_storage_root",
    "gopher://example.com/": "url_scheme_not_allowed",
}


async def test_ssrf_inputs_fail_the_task_with_a_clear_code(stack, fake_servers):
    server = fake_servers()
    stack.consumer(**fake_env(server))
    async with ProducerClient(stack.url) as client:
        tasks = {url: await client.submit("fake_model", {"source_url": url}) for url in SSRF_INPUTS}
        for url, code in SSRF_INPUTS.items():
            done = await client.wait(tasks[url]["task_id"], timeout=30)
            assert done["status"] == "FAILED", stack.logs()
            assert (done["error"]["code"], done["attempts"]) == (code, 1), (url, done["error"])
    assert server.stats()["calls"] == 0


async def test_metrics_and_json_logs(stack):
    """The metrics endpoint counts outcomes; log lines are JSON and carry the task id."""
    consumer = stack.consumer()
    async with ProducerClient(stack.url) as client:
        ok = await client.submit("echo", {"data": 1})
        bad = await client.submit("echo", {"data": 1, "fail": "fatal"})
        await client.wait(ok["task_id"], timeout=20)
        await client.wait(bad["task_id"], timeout=20)
    text = httpx.get(consumer.metrics_url).text
    assert 'taskfleet_consumer_tasks_total{outcome="completed",workflow="echo"} 1.0' in text
    assert 'taskfleet_consumer_tasks_total{outcome="failed",workflow="echo"} 1.0' in text
    assert 'taskfleet_consumer_in_flight{workflow="echo"} 0.0' in text
    records = [json.loads(line) for line in consumer.log_text().splitlines() if line.startswith("{")]
    mine = [r for r in records if r.get("task_id") == bad["task_id"]]
    assert any(r["msg"].startswith("task failed") and r["workflow"] == "echo" for r in mine), consumer.log_text()


async def test_consumer_token(stack_factory):
    """With tokens configured, a consumer holding a producer token gets nothing and stops; the right one works."""
    stack = stack_factory(TASKFLEET_PRODUCER_TOKENS="ptok", TASKFLEET_CONSUMER_TOKENS="ctok")
    async with ProducerClient(stack.url, "ptok") as client:
        task = await client.submit("echo", {"data": "secret"})
        wrong = stack.consumer("wrong", wait_ready=False, TASKFLEET_CONSUMER_TOKEN="ptok")
        assert await asyncio.to_thread(wrong.wait, 60) == 2
        assert "403 forbidden" in wrong.log_text()
        assert (await client.get(task["task_id"]))["status"] == "PENDING"
        stack.consumer("right", TASKFLEET_CONSUMER_TOKEN="ctok")
        done = await client.wait(task["task_id"], timeout=20)
    assert done["status"] == "COMPLETED" and done["consumer_id"] == "right", stack.logs()


async def test_a_running_consumer_reports_itself_and_its_model_servers(stack, fake_servers):
    server = fake_servers(capacity=2)
    stack.consumer(**fake_env(server, TASKFLEET_CONCURRENCY=3))
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=stack.url) as http:
        while True:
            listed = (await http.get("/api/consumers")).json()["consumers"]
            if listed and listed[0]["model_servers"][0]["status"] == "healthy":
                break
            assert time.monotonic() < deadline, (listed, stack.logs())
            await asyncio.sleep(0.2)
    (consumer,) = listed
    assert consumer["consumer_id"] == "consumer0" and consumer["workflows"] == ["fake_model"]
    assert consumer["concurrency"] == 3 and consumer["in_flight"] == 0
    assert [(s["url"], s["workflow"], s["capacity"]) for s in consumer["model_servers"]] == [(server.url, "fake", 2)]


async def test_a_server_full_of_others_calls_gets_our_task_soon_after_they_end(stack, fake_servers):
    """Health TTL 60 s: only the quick re-checks of a server that others' calls fill can see it
    free again before the test's 20 s are up; with the TTL alone the task would wait 30 s."""
    server = fake_servers(capacity=1)
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as other:
        # A direct caller fills the server while the consumer starts and first asks its /health.
        call = asyncio.ensure_future(other.post("/process", json={"sleep_s": 5}))
        while server.stats()["active"] == 0:
            await asyncio.sleep(0.01)
        stack.consumer(**fake_env(server, TASKFLEET_WORKFLOWS="fake_model,echo", TASKFLEET_HEALTH_TTL_S=60))
        async with ProducerClient(stack.url) as client:
            task_id = (await client.submit("fake_model", {}))["task_id"]
            assert (await call).status_code == 200
            task = await wait_status(client, task_id, {"COMPLETED", "FAILED"}, timeout=20)
    assert task["status"] == "COMPLETED", stack.logs()
    assert server.stats()["max_concurrent"] == 1  # it waited for the other call; it never queued behind it
