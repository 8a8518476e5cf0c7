"""Fuzzing the task API on both databases: no route answers 5xx, whatever it is sent.

Schemathesis walks the OpenAPI document with a producer token and with a consumer token;
a hypothesis pass sends every route text over the whole Unicode range (lone surrogates and
NUL included, escaped and raw), NaN / Infinity / 1e400, in bodies, paths and query strings,
and completes whatever it gets to claim. Both are deterministic and bounded: about 20 s per
database on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any, Callable
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

TOKENS = {"producer": "fuzz-producer", "consumer": "fuzz-consumer"}
Draw = Callable[[st.SearchStrategy], Any]


@pytest.fixture
def api_env():
    # Short waits so long polls, /process calls and event streams come back quickly; small caps so the
    # fuzzers reach the limits too.
    return {"TASKFLEET_MAX_BODY_MB": "0.05", "TASKFLEET_MAX_INPUT_MB": "0.1", "TASKFLEET_REAP_INTERVAL_S": "0.5",
            "TASKFLEET_MAX_WAIT_S": "0.2", "TASKFLEET_MAX_PROCESS_WAIT_S": "0.2", "TASKFLEET_EVENTS_MAX_S": "0.2",
            "TASKFLEET_PRODUCER_TOKENS": TOKENS["producer"], "TASKFLEET_CONSUMER_TOKENS": TOKENS["consumer"]}  # fmt: skip


@pytest.mark.parametrize("kind,paths", [("producer", "--exclude-path-regex"), ("consumer", "--include-path-regex")])
def test_schemathesis_finds_no_server_error(api, kind, paths):
    cli = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    result = subprocess.run(
        [cli, "run", f"{api.url}/openapi.json", "--checks", "not_a_server_error",
         paths, "^/api/comm/", "-H", f"Authorization: Bearer {TOKENS[kind]}",
         "--max-examples", "15", "--phases", "examples,coverage,fuzzing", "--generation-deterministic",
         "--generation-allow-x00", "true", "--request-timeout", "30", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


# Every code point, lone surrogates and NUL included (st.characters() all but never draws
# those two), and the hostile ones more often than their share of the range, though not so
# often that most bodies are refused for a surrogate before anything else is looked at.
CODE_POINT = st.integers(0, 0x10FFFF).map(chr)
TEXT = st.lists(st.one_of(CODE_POINT, CODE_POINT, CODE_POINT, st.sampled_from("\x00\ud800\udfff\ufffd/%")), max_size=12).map("".join)
HOSTILE = st.sampled_from([float("inf"), float("-inf"), float("nan"), "\ud800", "\udfff", "\x00", "a\x00b", 10**400])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT | HOSTILE
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)


def encode(draw: Draw, value: Any) -> bytes:
    """JSON text as a client might write it: surrogates escaped (``\\ud800``) or raw (CESU
    bytes), NaN / Infinity literals or an out-of-range 1e400."""
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
    if draw(st.booleans()):
        text = text.replace("Infinity", "1e400")
    return text.encode("utf-8", "surrogatepass")


def segment(draw: Draw, *valid: str) -> str:
    """A path segment or query value: any text, percent-encoded as UTF-8 (surrogates as the
    bytes a careless encoder writes), or one of the valid values, so that checks after the
    parameter's own are reached too."""
    hostile = quote(draw(TEXT).encode("utf-8", "surrogatepass"), safe="") or "x"
    return draw(st.sampled_from([hostile, *valid])) if valid else hostile


def body_of(draw: Draw, fields: dict[str, Any]) -> bytes:
    """A body that is mostly right, with hostile values in some fields, or anything at all."""
    if draw(st.integers(0, 4)) == 0:
        return encode(draw, draw(VALUES))
    return encode(draw, {k: draw(TEXT | HOSTILE | VALUES) if draw(st.booleans()) else v for k, v in fields.items()})


def requests_for(draw: Draw, task_id: str, lease_id: str) -> list[tuple[str, str, str, bytes | None]]:
    """One request to every route: (token kind, method, path, body)."""
    tid = segment(draw, task_id)
    lease = {"lease_id": draw(st.sampled_from([lease_id, "l"]))}
    task = {"workflow": "echo", "input": {"data": 1}, "metadata": {}, "idempotency_key": "k", "priority": 0}
    listing = f"workflow={segment(draw, 'echo')}&status={segment(draw, 'PENDING', 'COMPLETED')}&cursor={segment(draw, '1')}"
    fetch = f"workflow={segment(draw, 'echo')}&consumer_id={segment(draw, 'c')}&host={segment(draw, 'h')}"
    return [
        ("producer", "POST", "/api/tasks", body_of(draw, task)),
        ("producer", "POST", "/api/tasks/batch", body_of(draw, {"tasks": [task]})),
        ("producer", "GET", f"/api/tasks/{tid}", None),
        ("producer", "GET", f"/api/tasks?{listing}", None),
        ("producer", "POST", f"/api/tasks/{tid}/cancel", None),
        ("producer", "POST", f"/api/tasks/{tid}/retry", None),
        ("producer", "POST", f"/api/{segment(draw, 'echo')}/create-task", body_of(draw, {"data": 1})),
        ("producer", "POST", f"/api/{segment(draw, 'echo')}/process?wait_s=0", body_of(draw, {"data": 1})),
        ("consumer", "GET", f"/api/comm/task/fetch?wait_s=0&{fetch}", None),
        ("consumer", "POST", f"/api/comm/task/{tid}/heartbeat", body_of(draw, {**lease, "progress": {"percent": 1, "message": ""}})),
        ("consumer", "POST", f"/api/comm/task/{tid}/complete", body_of(draw, {**lease, "output": 1})),
        ("consumer", "POST", "/api/comm/tasks/complete", body_of(draw, {"items": [{"task_id": task_id, **lease, "output": 1}]})),
        ("consumer", "POST", f"/api/comm/task/{tid}/fail", body_of(draw, {**lease, "error": {"code": "x", "message": ""}, "retryable": True})),
        ("consumer", "POST", f"/api/comm/task/{tid}/release", body_of(draw, lease)),
        ("none", "GET", f"/files/{segment(draw)}", None),
    ]  # fmt: skip


def test_hypothesis_hostile_text_gets_no_server_error_on_any_route(api):
    auth = {kind: {"Authorization": f"Bearer {token}"} for kind, token in TOKENS.items()} | {"none": {}}
    http = httpx.Client(base_url=api.url, timeout=30)

    def send(kind: str, method: str, path: str, body: bytes | None) -> httpx.Response:
        headers = {**auth[kind], **({"content-type": "application/json"} if body is not None else {})}
        r = http.request(method, path, content=body, headers=headers)
        assert r.status_code < 500, (method, path, body, r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert r.json()["error"]["code"], (method, path, body, r.text[:300])
        return r

    # Every draw is made whatever the server answers, so an example replays the same; no
    # shrinking: the failing request is in the assertion, and a live server's state moves on.
    @settings(max_examples=150, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.data())
    def every_route(data):
        # Something real to aim at: a task created and leased, whose id and lease the requests
        # below use some of the time.
        created = send("producer", "POST", "/api/tasks", json.dumps({"workflow": "echo", "input": {"data": "ok"}}).encode())
        task_id = created.json()["task_id"]
        fetched = send("consumer", "GET", "/api/comm/task/fetch?wait_s=0&limit=100", None)
        leases = {t["task_id"]: t["lease"]["id"] for t in fetched.json()["tasks"]} if fetched.status_code == 200 else {}
        plan = requests_for(data.draw, task_id, leases.get(task_id, "l"))
        outputs = [encode(data.draw, data.draw(VALUES)) for _ in range(3)]
        for kind, method, path, body in plan:
            send(kind, method, path, body)
        # Whatever was accepted can be claimed, completed with hostile output, and read back.
        fetched = send("consumer", "GET", "/api/comm/task/fetch?wait_s=0&limit=100", None)
        for i, t in enumerate(fetched.json()["tasks"] if fetched.status_code == 200 else []):
            body = b'{"lease_id":"%s","output":%s}' % (t["lease"]["id"].encode(), outputs[i % len(outputs)])
            send("consumer", "POST", f"/api/comm/task/{t['task_id']}/complete", body)
            send("producer", "GET", f"/api/tasks/{t['task_id']}", None)
        send("producer", "GET", "/api/tasks?limit=500", None)

    try:
        every_route()
    finally:
        http.close()
