"""Bad input gets a 4xx with a stable code, never a 5xx — by hand (the fuzzers are in test_api_fuzz)."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture
def api_env():
    return {"TASKFLEET_MAX_BODY_MB": "0.05", "TASKFLEET_MAX_INPUT_MB": "0.1", "TASKFLEET_REAP_INTERVAL_S": "0.5",
            "TASKFLEET_MAX_WAIT_S": "0.2", "TASKFLEET_MAX_PROCESS_WAIT_S": "0.2"}


CASES = [
    # (method, path, kwargs, status, code)
    ("POST", "/api/tasks", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ("POST", "/api/tasks", {"json": []}, 422, "validation_error"),
    ("POST", "/api/tasks", {"content": b""}, 422, "validation_error"),
    ("POST", "/api/tasks", {"content": b"\xff\xfe{}", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo"}, "headers": {"idempotency-key": "k" * 201}}, 422, "validation_error"),
    ("POST", "/api/tasks", {"json": {"input": {}}}, 422, "validation_error"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo", "priority": "high"}}, 422, "validation_error"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo", "priority": 10**9}}, 422, "validation_error"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo", "max_attempts": 0}}, 422, "validation_error"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo", "timeout_s": -1}}, 422, "validation_error"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo", "surprise": 1}}, 422, "validation_error"),
    ("POST", "/api/tasks", {"json": {"workflow": "nope"}}, 422, "unknown_workflow"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo", "input": {"sleep_s": "x"}}}, 422, "invalid_input"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo", "input": {"other": 1}}}, 422, "invalid_input"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo", "webhook_url": "gopher://x"}}, 422, "url_scheme_not_allowed"),
    ("POST", "/api/tasks", {"json": {"workflow": "echo", "input": {"data": "x" * 100_000}}}, 413, "payload_too_large"),
    ("GET", "/api/tasks?limit=0", {}, 422, "validation_error"),
    ("GET", "/api/tasks?status=DONE", {}, 422, "validation_error"),
    ("GET", "/api/tasks?cursor=abc", {}, 400, "invalid_cursor"),
    ("GET", "/api/comm/task/fetch?limit=1000", {}, 422, "validation_error"),
    ("GET", "/api/comm/task/fetch?wait_s=-1", {}, 422, "validation_error"),
    ("POST", "/api/comm/task/tsk_x/heartbeat", {"json": {}}, 422, "validation_error"),
    ("POST", "/api/comm/task/tsk_x/heartbeat", {"json": {"lease_id": "l", "progress": {"percent": 500}}}, 422, "validation_error"),
    ("POST", "/api/comm/task/tsk_x/fail", {"json": {"lease_id": "l", "error": {"code": "has space"}, "retryable": True}}, 422, "validation_error"),
    ("POST", "/api/comm/task/tsk_x/complete", {"json": {"lease_id": "l"}}, 404, "not_found"),
    ("POST", "/api/no-such-route/create-task", {"json": {}}, 404, "not_found"),
    ("POST", "/api/echo/create-task", {"json": {"sleep_s": -5}}, 422, "invalid_input"),
    ("DELETE", "/api/tasks", {}, 405, "method_not_allowed"),
    ("GET", "/nowhere", {}, 404, "not_found"),
]


def test_malformed_requests_get_4xx_with_codes(api):
    with httpx.Client(base_url=api.url) as http:
        for method, path, kwargs, status, code in CASES:
            r = http.request(method, path, **kwargs)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (method, path, r.text[:300])


def test_oversize_chunked_body_and_upload_are_cut_off(api):
    def chunks():
        for _ in range(200):
            yield b"x" * 1024

    with httpx.Client(base_url=api.url) as http:
        r = http.post("/api/tasks", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = http.post("/api/files", files={"file": ("big.bin", b"\0" * 200_000)})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = http.post("/api/files", files={"file": ("small.txt", b"hello", "text/plain")})
        assert r.status_code == 201
        assert http.get(r.json()["url"].replace(api.url, "")).content == b"hello"

