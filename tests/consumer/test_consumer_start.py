"""How a real consumer process starts against a real API: a bare one serves what it can, and one
whose token the API refuses stops with the reason instead of polling forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from consumer.registry import Runnable
from consumer.runner import _servable
from support import ROOT, api_process, consumer_process, wait_done, wait_http
from taskfleet.errors import ConfigError
from taskfleet.workflows import Workflow
from taskfleet.workflows.echo import ECHO


def clean_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("TASKFLEET_")}
    return {**base, **env, "PYTHONUNBUFFERED": "1"}


def test_a_bare_consumer_serves_echo_and_says_which_workflows_it_skipped(tmp_path):
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path) as api:
        consumer = consumer_process(api.url, tmp_path, workflows="")
        env = {k: v for k, v in consumer.env.items() if k != "TASKFLEET_WORKFLOWS"}  # nothing named
        log = tmp_path / "consumer.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "consumer"], cwd=ROOT, env=clean_env(env),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
            try:
                wait_http(f"http://127.0.0.1:{consumer.port}/metrics", 60, process)
                with httpx.Client(base_url=api.url, trust_env=False, timeout=30) as client:
                    created = client.post("/api/tasks", json={"workflow": "echo", "input": {"data": {"n": 1}}})
                    assert created.status_code == 201, created.text
                    done = wait_done(client, created.json()["task_id"])
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
    assert done["status"] == "COMPLETED" and done["output"] == {"data": {"n": 1}}
    skipped = [line for line in log.read_text().splitlines() if "skipping workflows" in line]
    assert len(skipped) == 1, log.read_text()
    for workflow, setting in (("face_swap", "TASKFLEET_FACE_SWAP_URLS"), ("image_gen", "TASKFLEET_FLUX_URLS"),
                              ("tts", "TASKFLEET_TTS_URLS")):
        assert f"{workflow} (needs {setting})" in skipped[0]


async def _noop(ctx):
    return {}


def test_with_nothing_servable_the_consumer_still_refuses_to_start():
    gpu_only = Workflow(name="paint", input_model=ECHO.input_model, model_server="painter")
    runnables = {"paint": Runnable(gpu_only, _noop)}
    with pytest.raises(ConfigError, match=r'paint \(needs TASKFLEET_MODEL_SERVER_URLS \(\{"painter": \[\.\.\.\]\}\)\)'):
        _servable(runnables, {})
    assert _servable(runnables, {"painter": ["http://p:1"]}) == runnables


@pytest.mark.parametrize(
    ("token", "status"),
    [("not-a-token", "401"), ("producer-secret", "403"), (None, "401")],
    ids=["unknown token", "producer token", "no token"],
)
def test_a_refused_token_stops_the_consumer_with_one_line(tmp_path, token, status):
    tokens = {"TASKFLEET_PRODUCER_TOKENS": "producer-secret", "TASKFLEET_CONSUMER_TOKENS": "consumer-secret"}
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, **tokens) as api:
        env = dict(consumer_process(api.url, tmp_path, workflows="echo").env)
        if token:
            env["TASKFLEET_CONSUMER_TOKEN"] = token
        result = subprocess.run(
            [sys.executable, "-m", "consumer"], cwd=ROOT, env=clean_env(env),
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("taskfleet consumer: error: the task API refused this consumer's token")
    assert f"({status} " in last and "TASKFLEET_CONSUMER_TOKEN" in last
    assert [line for line in result.stderr.splitlines() if "refused" in line] == [last]
