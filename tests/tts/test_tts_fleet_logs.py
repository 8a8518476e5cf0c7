"""One log format across the fleet: a task API, a consumer and a TTS server (espeak-ng), each a real
process writing JSON lines, and one task followed through all three by its task id and request ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from support import wait_done
from tts_helpers import Process, free_port, tts_server

pytestmark = pytest.mark.timeout(120)


def json_lines(path: Path) -> list[dict]:
    """Every line the process wrote; each must be one JSON object (uvicorn's own included)."""
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


def test_one_task_is_followed_across_api_consumer_and_model_server(tmp_path):
    storage, work = tmp_path / "storage", tmp_path / "work"
    work.mkdir()
    api_port, metrics_port = free_port(), free_port()
    logs = {"TASKFLEET_LOG_FORMAT": "json", "TASKFLEET_LOG_LEVEL": "DEBUG"}
    api = Process(
        "task_api", ["--host", "127.0.0.1", "--port", str(api_port)],
        {"TASKFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'tasks.db'}", "TASKFLEET_STORAGE_URL": storage.as_uri(),
         "TASKFLEET_LOG_FORMAT": "json", "TASKFLEET_LOG_LEVEL": "debug"},
        f"http://127.0.0.1:{api_port}/ready", tmp_path / "api.log",
    )
    with tts_server(tmp_path, **logs) as tts, api:
        consumer = Process(
            "consumer", [],
            {"TASKFLEET_API_URL": api.url, "TASKFLEET_WORKFLOWS": "tts", "TASKFLEET_TTS_URLS": tts.url,
             "TASKFLEET_STORAGE_URL": storage.as_uri(), "TASKFLEET_WORK_DIR": str(work),
             "TASKFLEET_METRICS_PORT": str(metrics_port), "TASKFLEET_FETCH_WAIT_S": "1", **logs},
            f"http://127.0.0.1:{metrics_port}/metrics", tmp_path / "consumer.log",
        )
        with consumer, httpx.Client(base_url=api.url, timeout=30, trust_env=False) as client:
            created = client.post("/api/tts/create-task", json={"text": "Follow me."}, headers={"X-Request-ID": "caller-req-17"})
            assert created.status_code == 201 and created.headers["X-Request-ID"] == "caller-req-17"
            task_id = created.json()["task_id"]
            # Made by the API when the caller sends none, or sends one unfit for a log line.
            assert re.fullmatch(r"[0-9a-f]{32}", client.get("/health").headers["X-Request-ID"])
            assert client.get("/health", headers={"X-Request-ID": "x\" {"}).headers["X-Request-ID"] != "x\" {"
            assert wait_done(client, task_id)["status"] == "COMPLETED"
        tts_log = Path(tts.log_path)
    api_lines, consumer_lines, tts_lines = json_lines(tmp_path / "api.log"), json_lines(tmp_path / "consumer.log"), json_lines(tts_log)

    for lines in (api_lines, consumer_lines, tts_lines):
        assert all({"ts", "level", "logger", "msg"} <= set(r) for r in lines)
    # uvicorn's lines are in the same format (the API's and the model server's).
    assert any(r["logger"].startswith("uvicorn") for r in api_lines)
    assert any(r["logger"].startswith("uvicorn") for r in tts_lines)

    # The API: the create at info under the caller's request id, then every state change.
    mine = [r for r in api_lines if r.get("task_id") == task_id]
    changes = [r for r in mine if r["logger"] == "taskfleet.api.tasks"]
    (create,) = [r for r in changes if r["msg"] == "task created: PENDING"]
    assert create["request_id"] == "caller-req-17" and create["level"] == "INFO" and create["workflow"] == "tts"
    assert any(r["msg"].startswith("task leased to ") for r in changes)
    assert changes[-1]["msg"] == "task ended: COMPLETED"
    # One line per request at debug, with its request id.
    requests = [r for r in api_lines if r["logger"] == "taskfleet.api.http"]
    assert any(r["path"] == "/api/tts/create-task" and r["status"] == 201 and r["request_id"] == "caller-req-17"
               and r["level"] == "DEBUG" for r in requests)

    # The consumer's lines for the task carry one request id for the attempt...
    attempt = {r["request_id"] for r in consumer_lines if r.get("task_id") == task_id and "request_id" in r}
    assert len(attempt) == 1, consumer_lines
    (attempt_id,) = attempt
    assert any(r["msg"] == "task completed" for r in consumer_lines if r.get("task_id") == task_id)
    # ...which reached the model server with the task id, on its request line...
    assert any(r["path"] == "/tts" and r.get("task_id") == task_id and r.get("request_id") == attempt_id
               for r in tts_lines if r["logger"] == "model_servers.http")
    # ...and the API, on the attempt's heartbeat or completion.
    assert any(r.get("request_id") == attempt_id and r.get("task_id") == task_id for r in requests)
