"""The auth matrix: every route × no token / wrong token / wrong kind; and open mode's limits."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import httpx
import pytest

from support import ROOT, free_port
from task_api.auth import Authenticator
from taskfleet.errors import ConfigError

TOKENS = {"producer": "prod-secret", "consumer": "cons-secret", "admin": "admin-secret"}

PRODUCER_ROUTES = [
    ("POST", "/api/tasks", {"workflow": "echo", "input": {}}),
    ("GET", "/api/tasks/tsk_x", None),
    ("GET", "/api/tasks", None),
    ("POST", "/api/tasks/tsk_x/cancel", None),
    ("POST", "/api/tasks/tsk_x/retry", None),
    ("POST", "/api/echo/create-task", {"data": 1}),
    ("POST", "/api/echo/process?wait_s=0", {"data": 1}),
    ("POST", "/api/files", None),
]
CONSUMER_ROUTES = [
    ("GET", "/api/comm/task/fetch?wait_s=0", None),
    ("POST", "/api/comm/task/tsk_x/heartbeat", {"lease_id": "l"}),
    ("POST", "/api/comm/task/tsk_x/complete", {"lease_id": "l", "output": {}}),
    ("POST", "/api/comm/task/tsk_x/fail", {"lease_id": "l", "error": {"code": "x", "message": ""}, "retryable": False}),
    ("POST", "/api/comm/task/tsk_x/release", {"lease_id": "l"}),
]


@pytest.fixture
def api_env():
    return {
        "TASKFLEET_PRODUCER_TOKENS": f"other,{TOKENS['producer']}",
        "TASKFLEET_CONSUMER_TOKENS": TOKENS["consumer"],
        "TASKFLEET_ADMIN_TOKENS": TOKENS["admin"],
        "TASKFLEET_METRICS_TOKEN": "metrics-secret",
    }


def call(http: httpx.Client, method: str, path: str, body, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if path == "/api/files":
        return http.request(method, path, files={"file": ("a.txt", b"hello", "text/plain")}, headers=headers)
    return http.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("kind,routes", [("producer", PRODUCER_ROUTES), ("consumer", CONSUMER_ROUTES)])
def test_auth_matrix(api, kind, routes):
    wrong_kind = "consumer" if kind == "producer" else "producer"
    with httpx.Client(base_url=api.url) as http:
        for method, path, body in routes:
            none = call(http, method, path, body, None)
            assert none.status_code == 401 and none.json()["error"]["code"] == "unauthorized", (method, path)
            bad = call(http, method, path, body, "not-a-token")
            assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized", (method, path)
            raw = http.request(method, path, headers={"Authorization": "Basic abc"})
            assert raw.status_code == 401, (method, path)
            other = call(http, method, path, body, TOKENS[wrong_kind])
            assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden", (method, path)
            for token in (TOKENS[kind], TOKENS["admin"]):
                ok = call(http, method, path, body, token)
                assert ok.status_code not in (401, 403), (method, path, ok.status_code)


def test_health_ready_open_metrics_token(api):
    with httpx.Client(base_url=api.url) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/ready").status_code == 200
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer metrics-secret"}).status_code == 200


def test_open_mode_refuses_a_non_loopback_bind(tmp_path):
    env = {"TASKFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "TASKFLEET_STORAGE_URL": f"file://{tmp_path}"}
    result = subprocess.run(
        [sys.executable, "-m", "task_api", "--host", "0.0.0.0", "--port", str(free_port())],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to run open" in result.stderr


@pytest.mark.parametrize("how", ["--host ''", "TASKFLEET_HOST="])
def test_open_mode_refuses_an_empty_host(database_url, tmp_path, how):
    """An empty host is every interface to uvicorn (0.0.0.0 and [::]), not loopback."""
    env = {**os.environ, "TASKFLEET_DATABASE_URL": database_url, "TASKFLEET_STORAGE_URL": f"file://{tmp_path}"}
    args = [sys.executable, "-m", "task_api", "--port", str(free_port())]
    if how.startswith("--host"):
        args += ["--host", ""]
    else:
        env["TASKFLEET_HOST"] = ""
    with subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True) as api:
        try:
            _, stderr = api.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            api.kill()
            api.communicate()
            pytest.fail("the API started open on every interface")
    assert api.returncode != 0
    assert "refusing to run open" in stderr and "0.0.0.0" in stderr


def resolving(monkeypatch, names: dict[str, list[str]]) -> None:
    def getaddrinfo(host, port, *args, **kwargs):
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in names[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("host,addresses", [
    ("", ["0.0.0.0", "::"]),
    ("api.internal", ["10.1.2.3"]),
    ("dual.internal", ["127.0.0.1", "10.1.2.3"]),
    ("nowhere.invalid", None),
])  # fmt: skip
def test_open_mode_decides_on_the_addresses_bound(monkeypatch, host, addresses):
    resolving(monkeypatch, {None: ["0.0.0.0", "::"]} | ({host: addresses} if addresses else {}))
    with pytest.raises(ConfigError, match="refusing to run open"):
        Authenticator({}, host=host)


def test_open_mode_on_a_loopback_name_says_what_it_binds(monkeypatch, caplog):
    resolving(monkeypatch, {"localhost": ["127.0.0.1", "::1"]})
    with caplog.at_level(logging.WARNING, logger="taskfleet.api.auth"):
        assert Authenticator({}, host="localhost").open
    assert "OPEN to anyone on localhost (127.0.0.1, ::1: loopback only)" in caplog.text
    assert not Authenticator({"producer": ["t"]}, host="").open  # tokens: any bind is allowed
