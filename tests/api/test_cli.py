"""The command line: `taskfleet submit --wait` against a real API and consumer, and `taskfleet up --demo`."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys

import pytest

from support import ROOT, api_process, consumer_process


def taskfleet(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "taskfleet", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )


def test_submit_waits_for_the_result(tmp_path):
    with api_process(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path) as api:
        with consumer_process(api.url, tmp_path, "echo"):
            done = taskfleet("submit", "echo", "--input", '{"data": {"n": 5}}', "--wait", "--timeout", "60",
                             TASKFLEET_API_URL=api.url)
            assert done.returncode == 0, done.stderr
            task = json.loads(done.stdout)
            assert task["status"] == "COMPLETED" and task["output"] == {"data": {"n": 5}}

            bad = taskfleet("submit", "echo", "--input", '{"fail": "sometimes"}', TASKFLEET_API_URL=api.url)
            assert bad.returncode == 2
            assert bad.stderr.startswith("taskfleet submit: error: invalid_input: ")


def test_unknown_command_and_missing_kind_are_usage_errors():
    assert taskfleet("nope").returncode == 2
    assert taskfleet("model-server").returncode == 2
    assert taskfleet("models", "download", "nothing").returncode == 2


def free_stack_port() -> int:
    """A port for ``taskfleet up --port``, free with its model servers' (+101..+103), below the
    kernel's range for outgoing connections (32768-60999 here): there a client socket of another
    test could take one of the four between our check and the servers' binds."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        try:
            for p in (port, port + 101, port + 102, port + 103):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise AssertionError("no free port range for the stack")


@pytest.mark.timeout(400)
def test_up_runs_the_demo_through_the_local_stack(tmp_path):
    # The README's main command, minus the set-up: the stack comes up, real work goes through
    # (echo, a face swap of two real photos, speech, a text_to_video on the tiny random Flux
    # model the demo builds), and it stops cleanly.
    port = free_stack_port()
    result = taskfleet("up", "--demo", "--exit-after-demo", "--port", str(port), "--data-dir", str(tmp_path),
                       timeout=380)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for workflow in ("echo", "face_swap", "tts", "text_to_video"):
        assert f"== {workflow}: COMPLETED" in result.stdout
    assert "video: http" in result.stdout and "tiny random Flux model" in result.stdout
    outputs = list((tmp_path / "storage").rglob("*"))
    assert any(p.name == "output.jpg" for p in outputs) and any(p.suffix == ".srt" for p in outputs)
    assert any(p.name == "video.mp4" and p.stat().st_size > 0 for p in outputs)
    # The local stack logs for a terminal: text lines, not a collector's JSON.
    assert not [line for line in result.stderr.splitlines() if line.startswith('{"ts"')], result.stderr[-2000:]
