"""Real processes on loopback: the task API, consumers, fake model servers; and the test plugin package."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
# pytest's pythonpath = ["tests"] would let the tests/storage folder shadow the storage package.
if sys.path[0] != str(ROOT):
    sys.path.insert(0, str(ROOT))
HERE = Path(__file__).resolve().parent
PY = sys.executable


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def base_env(**extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLEET_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def wait_http(url: str, proc: "Proc | None" = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not come up; log:\n{proc.log_text()[-3000:] if proc else ''}")


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


class FakeModelServer:
    def __init__(self, name: str, port: int, capacity: int, log_dir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = Proc(
            name,
            [PY, str(HERE / "fake_model_server.py"), "--port", str(port), "--capacity", str(capacity)],
            base_env(PYTHONPATH=str(ROOT)),
            log_dir,
        )

    def start(self) -> "FakeModelServer":
        self.proc.start()
        wait_http(self.url + "/health", self.proc)
        return self

    def stop(self) -> None:
        self.proc.stop()

    def control(self, mode: str = "ok", delay_s: float = 0.0) -> None:
        httpx.post(self.url + "/_control", json={"mode": mode, "delay_s": delay_s}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_stats").json()


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The test plugin, pip-installed into a directory of its own (not the shared venv)."""
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    shutil.copytree(HERE / "plugin_pkg", src)
    site = work / "site"
    subprocess.run(
        [PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(src)],
        check=True, capture_output=True,
    )
    assert list(site.glob("taskfleet_fakemodel-*.dist-info")), "plugin did not install"
    return site


@pytest.fixture
def log_dir(tmp_path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.fixture
def fake_servers(log_dir) -> Callable[..., FakeModelServer]:
    started: list[FakeModelServer] = []

    def make(capacity: int = 1, name: str | None = None) -> FakeModelServer:
        server = FakeModelServer(name or f"fake{len(started)}", free_port(), capacity, log_dir).start()
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()


class Stack:
    """One task API with its storage; consumers started on demand."""

    def __init__(self, tmp: Path, log_dir: Path, plugin_site: Path, api_env: dict[str, Any]) -> None:
        self.tmp = tmp
        self.log_dir = log_dir
        self.storage_root = tmp / "storage"
        self.storage_root.mkdir()
        self.work_root = tmp / "work"
        self.work_root.mkdir()
        self.pythonpath = f"{plugin_site}{os.pathsep}{ROOT}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = base_env(
            PYTHONPATH=self.pythonpath,
            TASKFLEET_DATABASE_URL=f"sqlite:///{tmp}/tasks.db",
            TASKFLEET_STORAGE_URL=self.storage_root.as_uri(),
            TASKFLEET_LEASE_S=2,
            TASKFLEET_REAP_INTERVAL_S=0.2,
            TASKFLEET_BACKOFF_BASE_S=0.05,
            TASKFLEET_BACKOFF_MAX_S=0.2,
            **api_env,
        )
        self.api = Proc("api", [PY, "-m", "task_api", "--port", str(self.port), "--log-level", "warning"], env, log_dir)
        self.consumers: list[Proc] = []

    def start(self) -> "Stack":
        self.api.start()
        wait_http(self.url + "/health", self.api)
        return self

    def consumer(self, name: str | None = None, *, wait_ready: bool = True, **env: Any) -> Proc:
        name = name or f"consumer{len(self.consumers)}"
        metrics_port = free_port()
        settings = dict(
            TASKFLEET_API_URL=self.url,
            TASKFLEET_CONSUMER_ID=name,
            TASKFLEET_STORAGE_URL=self.storage_root.as_uri(),
            TASKFLEET_WORK_DIR=self.work_root,
            TASKFLEET_FETCH_WAIT_S=1,
            TASKFLEET_HEALTH_TTL_S=0.3,
            TASKFLEET_BREAKER_RESET_S=0.5,
            TASKFLEET_OUTAGE_BACKOFF_MAX_S=1,
            TASKFLEET_METRICS_PORT=metrics_port,
            TASKFLEET_SHUTDOWN_GRACE_S=10,
            TASKFLEET_CONCURRENCY=2,
            TASKFLEET_WORKFLOWS="echo",
        )
        settings.update(env)
        if isinstance(settings.get("TASKFLEET_MODEL_SERVER_URLS"), dict):
            settings["TASKFLEET_MODEL_SERVER_URLS"] = json.dumps(settings["TASKFLEET_MODEL_SERVER_URLS"])
        proc = Proc(name, [PY, "-m", "consumer"], base_env(PYTHONPATH=self.pythonpath, **settings), self.log_dir)
        proc.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        proc.start()
        self.consumers.append(proc)
        if wait_ready:
            wait_http(proc.metrics_url, proc)
        return proc

    def logs(self) -> str:
        """Every process log of the test, for assertion messages."""
        return "\n".join(
            f"==== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        for c in self.consumers:
            c.stop()
        self.api.stop()


@pytest.fixture
def stack_factory(tmp_path, log_dir, plugin_site):
    stacks: list[Stack] = []

    def make(**api_env: Any) -> Stack:
        d = tmp_path / f"stack{len(stacks)}"
        d.mkdir()
        stack = Stack(d, log_dir, plugin_site, api_env).start()
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        s.stop()


@pytest.fixture
def stack(stack_factory) -> Stack:
    return stack_factory()


class ThreadServer:
    """A uvicorn app served from a thread of the test process (for servers tests poke directly)."""

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import threading

        import uvicorn

        self.host = host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("thread server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def thread_server():
    servers: list[ThreadServer] = []

    def make(app: Any, host: str = "127.0.0.1") -> ThreadServer:
        s = ThreadServer(app, host).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()
