"""The operator commands (`taskfleet tasks ...`, `consumers`, `stats`) as real processes against a
real API, and every way they can fail: one or two lines on stderr, a non-zero exit, no traceback.

`consumers` and `stats` run against a real API that a real consumer reports to. One test serves the
events stream from a small double (ops_double) whose task is unknown to a plain GET, so that a
watch passing there can only have read the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from support import ROOT, LiveServer, api_process, consumer_process, free_port
from taskfleet import commands


def taskfleet(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    # A wide terminal so that rich's tables keep whole task ids on one line.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "taskfleet", *args],
        cwd=ROOT, env={**clean, "COLUMNS": "200", **env}, capture_output=True, text=True, timeout=timeout,
    )


def assert_short_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def submit(api_url: str, input: dict) -> str:
    done = taskfleet("submit", "echo", "--input", json.dumps(input), "--api-url", api_url)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["task_id"]


def test_tasks_list_get_cancel_retry(tmp_path):
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path) as api:
        ids = [submit(api.url, {"data": n}) for n in range(3)]

        listed = taskfleet("tasks", "list", "--api-url", api.url)
        assert listed.returncode == 0, listed.stderr
        for task_id in ids:
            assert task_id in listed.stdout
        assert "PENDING" in listed.stdout and "echo" in listed.stdout

        # Two pages of two and one, newest first, joined by the printed cursor.
        first = json.loads(taskfleet("tasks", "list", "--limit", "2", "--json", "--api-url", api.url).stdout)
        assert [t["task_id"] for t in first["items"]] == ids[:0:-1]
        assert f"--cursor {first['next_cursor']}" in taskfleet("tasks", "list", "--limit", "2", "--api-url", api.url).stdout
        second = json.loads(
            taskfleet("tasks", "list", "--limit", "2", "--cursor", first["next_cursor"], "--json", "--api-url", api.url).stdout
        )
        assert [t["task_id"] for t in second["items"]] == ids[:1] and second["next_cursor"] is None

        cancelled = taskfleet("tasks", "cancel", ids[0], "--api-url", api.url)
        assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "CANCELLED"
        only_cancelled = json.loads(taskfleet("tasks", "list", "--status", "CANCELLED", "--json", "--api-url", api.url).stdout)
        assert [t["task_id"] for t in only_cancelled["items"]] == ids[:1]
        assert json.loads(taskfleet("tasks", "list", "--workflow", "tts", "--json", "--api-url", api.url).stdout)["items"] == []

        retried = taskfleet("tasks", "retry", ids[0], "--api-url", api.url)
        assert retried.returncode == 0 and json.loads(retried.stdout)["status"] == "PENDING"
        got = taskfleet("tasks", "get", ids[0], "--api-url", api.url)
        assert got.returncode == 0
        task = json.loads(got.stdout)
        assert task["task_id"] == ids[0] and task["status"] == "PENDING" and "history" in task


def test_watch_and_submit_wait_follow_a_task_to_the_end(tmp_path):
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path) as api:
        with consumer_process(api.url, tmp_path, "echo"):
            task_id = submit(api.url, {"data": 1, "sleep_s": 1})
            watched = taskfleet("tasks", "watch", task_id, "--json", "--timeout", "60", "--api-url", api.url)
            assert watched.returncode == 0, watched.stderr
            assert json.loads(watched.stdout)["status"] == "COMPLETED"
            assert task_id in watched.stderr and "COMPLETED" in watched.stderr and "100%" in watched.stderr

            failing = submit(api.url, {"fail": "fatal"})
            watched = taskfleet("tasks", "watch", failing, "--timeout", "60", "--api-url", api.url)
            assert watched.returncode == 1
            assert f"task {failing} ended FAILED: echo_fatal" in watched.stderr

            waited = taskfleet("submit", "echo", "--input", '{"data": 7, "sleep_s": 0.5}', "--wait", "--timeout", "60",
                               "--api-url", api.url)
            assert waited.returncode == 0, waited.stderr
            assert json.loads(waited.stdout)["output"] == {"data": 7} and "100%" in waited.stderr


def test_failures_are_one_or_two_lines_and_a_non_zero_exit(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    assert_short_failure(taskfleet("tasks", "list", "--api-url", down), "cannot reach the task API at " + down)
    assert_short_failure(taskfleet("tasks", "get", "tsk_x", "--api-url", "localhost:8000"), "--api-url")
    assert_short_failure(taskfleet("submit", "echo", "--input", f"@{tmp_path / 'missing.json'}"), "missing.json")
    assert_short_failure(taskfleet("submit", "echo", "--input", "{nope"), "--input is not JSON")
    assert_short_failure(taskfleet("tasks", "list", "--status", "DONE"), "--status")
    assert_short_failure(taskfleet("tasks"), "ACTION")

    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, TASKFLEET_PRODUCER_TOKENS="good") as api:
        assert_short_failure(taskfleet("tasks", "get", "tsk_nope", "--api-url", api.url, "--token", "good"), "not_found")
        assert_short_failure(taskfleet("tasks", "list", "--api-url", api.url, "--token", "bad"), "unauthorized")
        # The API's field-level details, on the second line.
        bad = taskfleet("submit", "echo", "--input", '{"fail": "sometimes"}', "--api-url", api.url, TASKFLEET_TOKEN="good")
        assert_short_failure(bad, "invalid_input", "fail: ")
        assert bad.returncode == 2
        # No consumer: the task stays PENDING past the timeout.
        created = taskfleet("submit", "echo", "--api-url", api.url, TASKFLEET_PRODUCER_TOKEN="good")
        task_id = json.loads(created.stdout)["task_id"]
        assert_short_failure(
            taskfleet("tasks", "watch", task_id, "--timeout", "0.5", "--api-url", api.url, TASKFLEET_ADMIN_TOKEN="good"),
            f"task {task_id} still PENDING after 0.5s",
        )


def test_retry_for_carries_a_command_through_an_api_that_is_not_up_yet(tmp_path):
    """An API restarting (here: not started yet) is waited for up to --retry-for; with 0 the
    command fails at once. The API below comes up about a second after the command starts,
    later than the client's own quick reconnects (0.2 + 0.4 s) reach."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
    command = [sys.executable, "-m", "taskfleet", "tasks", "list", "--json", "--api-url", url]
    patient = subprocess.Popen([*command, "--retry-for", "60"], cwd=ROOT, env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hasty = subprocess.Popen([*command, "--retry-for", "0"], cwd=ROOT, env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, hasty_err = hasty.communicate(timeout=60)
        assert hasty.returncode == 2 and "cannot reach the task API" in hasty_err, hasty_err
        assert patient.poll() is None  # still trying
        with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, port=port):
            out, err = patient.communicate(timeout=60)
        assert patient.returncode == 0, err
        assert json.loads(out)["items"] == []
    finally:
        for p in (patient, hasty):
            if p.poll() is None:
                p.kill()


def test_every_command_and_flag_has_help():
    for command, build in commands.PARSERS.items():
        parsers = [build()]
        for action in parsers[0]._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
        for parser in parsers:
            for action in parser._actions:
                assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
    for args in (["submit"], ["tasks"], ["tasks", "list"], ["tasks", "get"], ["tasks", "cancel"], ["tasks", "retry"],
                 ["tasks", "watch"], ["consumers"], ["stats"]):
        result = taskfleet(*args, "--help")
        assert result.returncode == 0 and f"usage: taskfleet {' '.join(args)}" in result.stdout, result.stderr


# The events stream, the consumer list and stats in the API's shapes, for the double below.
CONSUMER = {
    "consumer_id": "csm_double01", "host": "gpu-node-7", "workflows": ["face_swap"], "concurrency": 4,
    "in_flight": 2, "last_seen": "2026-12-01T16:00:00Z",
    "model_servers": [{"url": "http://face-swap:8100", "workflow": "face_swap", "status": "healthy", "in_flight": 2, "capacity": 2}],
}
STATS = {"workflows": [{
    "workflow": "face_swap", "pending": 41, "processing": 2, "completed_5m": 17, "completed_1h": 230,
    "failed_5m": 1, "failed_1h": 3, "wait_s": {"p50": 1.5, "p95": 9.25}, "run_s": {"p50": 12.0, "p95": 30.5},
    "oldest_pending_age_s": 64.0,
}]}


def ops_double(seen_tokens: list[str]) -> Starlette:
    def task(percent: float, status: str, message: str) -> dict:
        return {"task_id": "tsk_streamed", "workflow": "echo", "status": status, "progress": {"percent": percent, "message": message},
                "error": None, "attempts": 1, "max_attempts": 3}

    async def missing(request):
        return JSONResponse({"error": {"code": "not_found", "message": f"no task {request.path_params['task_id']}"}}, 404)

    async def events(request):
        if request.path_params["task_id"] != "tsk_streamed":
            return await missing(request)

        async def stream():
            yield b": keep-alive\n\n"
            for percent, status, message in ((0, "PENDING", ""), (40, "PROCESSING", "halfway"), (40, "PROCESSING", "blending frames")):
                yield f"event: task\ndata: {json.dumps(task(percent, status, message))}\n\n".encode()
                await asyncio.sleep(0.05)
            yield f"event: task\ndata: {json.dumps(task(40, 'COMPLETED', 'done streaming'))}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def consumers(request):
        seen_tokens.append(request.headers.get("authorization", ""))
        return JSONResponse({"consumers": [CONSUMER]})

    async def stats(request):
        seen_tokens.append(request.headers.get("authorization", ""))
        return JSONResponse(STATS)

    return Starlette(routes=[
        Route("/api/tasks/{task_id}/events", events), Route("/api/tasks/{task_id}", missing), Route("/api/consumers", consumers), Route("/api/stats", stats),
    ])


def test_watch_reads_the_events_stream_and_consumers_and_stats_print_tables():
    seen: list[str] = []
    with LiveServer(ops_double(seen), wait_loaded=False) as double:
        # The double's GET /api/tasks/{id} knows no task: the watch can only have followed the stream.
        watched = taskfleet("tasks", "watch", "tsk_streamed", "--json", "--api-url", double.url)
        assert watched.returncode == 0, watched.stderr
        assert json.loads(watched.stdout)["progress"]["message"] == "done streaming"
        assert "COMPLETED" in watched.stderr and "100%" in watched.stderr and "done streaming" in watched.stderr
        assert_short_failure(taskfleet("tasks", "watch", "tsk_other", "--api-url", double.url), "not_found: no task tsk_other")

        listed = taskfleet("consumers", "--api-url", double.url, TASKFLEET_ADMIN_TOKEN="adm")
        assert listed.returncode == 0, listed.stderr
        for text in ("csm_double01", "gpu-node-7", "2/4", "http://face-swap:8100", "healthy"):
            assert text in listed.stdout
        assert json.loads(taskfleet("consumers", "--json", "--api-url", double.url).stdout) == [CONSUMER]

        stats = taskfleet("stats", "--api-url", double.url, "--token", "adm")
        assert stats.returncode == 0, stats.stderr
        for text in ("face_swap", "41", "230", "9.2", "64.0s"):
            assert text in stats.stdout
        assert json.loads(taskfleet("stats", "--json", "--api-url", double.url).stdout) == STATS
    # The admin token from TASKFLEET_ADMIN_TOKEN and from --token; none when neither is given.
    assert seen == ["Bearer adm", "", "Bearer adm", ""]


def test_consumers_and_stats_print_what_the_real_api_knows(tmp_path):
    tokens = {"TASKFLEET_PRODUCER_TOKENS": "prod", "TASKFLEET_CONSUMER_TOKENS": "cons", "TASKFLEET_ADMIN_TOKENS": "adm"}
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, **tokens) as api:
        with consumer_process(api.url, tmp_path, "echo", TASKFLEET_CONSUMER_TOKEN="cons"):
            done = taskfleet("submit", "echo", "--input", '{"data": 3, "sleep_s": 0.3}', "--wait", "--timeout", "60",
                             "--api-url", api.url, "--token", "prod")
            assert done.returncode == 0, done.stderr
            deadline = time.monotonic() + 30
            while True:  # the consumer reports itself on start and every few seconds
                listed = taskfleet("consumers", "--json", "--api-url", api.url, TASKFLEET_ADMIN_TOKEN="adm")
                assert listed.returncode == 0, listed.stderr
                consumers = json.loads(listed.stdout)
                if consumers or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert len(consumers) == 1 and consumers[0]["workflows"] == ["echo"], consumers
            table = taskfleet("consumers", "--api-url", api.url, "--token", "adm")
            assert table.returncode == 0, table.stderr
            assert consumers[0]["consumer_id"] in table.stdout and consumers[0]["host"] in table.stdout
            assert_short_failure(taskfleet("consumers", "--api-url", api.url, "--token", "prod"), "forbidden")

            stats = json.loads(taskfleet("stats", "--json", "--api-url", api.url, "--token", "adm").stdout)
            echo = next(row for row in stats["workflows"] if row["workflow"] == "echo")
            assert echo["completed_5m"] == 1 and echo["pending"] == 0
            table = taskfleet("stats", "--api-url", api.url, "--token", "adm")
            assert table.returncode == 0, table.stderr
            row = next(line for line in table.stdout.splitlines() if " echo " in line)
            assert f"{echo['run_s']['p50']:.1f}s" in row, table.stdout
