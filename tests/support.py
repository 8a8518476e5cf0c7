"""Test support shared by every area: free ports, fresh Postgres databases, real server processes,
apps served by uvicorn in a thread."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

PG_ADMIN_URL = os.environ.get("TASKFLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    import asyncio

    import asyncpg

    name = f"tf_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    def run(statement: str) -> None:  # in a thread: callers may be inside an event loop
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, admin(statement)).result()

    run(f"CREATE DATABASE {name}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def wait_http(url: str, timeout_s: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


class ServerProcess:
    """A real server started as ``python -m MODULE`` in its own process group."""

    def __init__(self, module: str, args: list[str], env: dict[str, str], health_path: str, port: int) -> None:
        self.module, self.args, self.env, self.health_path, self.port = module, args, env, health_path, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "ServerProcess":
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args], env=env, cwd=ROOT, start_new_session=True
        )
        wait_http(self.url + self.health_path, timeout_s, self.process)
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def terminate(self, timeout_s: float = 20.0) -> int:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode if self.process else 0

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def api_process(database_url: str, tmp_path: Path, port: int | None = None, **env: str) -> ServerProcess:
    port = port or free_port()
    base = {
        "TASKFLEET_DATABASE_URL": database_url,
        "TASKFLEET_STORAGE_URL": f"file://{tmp_path / 'storage'}",
        "TASKFLEET_LOG_LEVEL": "warning",
    }
    base.update({k: str(v) for k, v in env.items()})
    return ServerProcess("task_api", ["--host", "127.0.0.1", "--port", str(port)], base, "/ready", port)


def consumer_process(api_url: str, tmp_path: Path, workflows: str, **env: str) -> ServerProcess:
    """A real consumer process serving ``workflows``; ready when its metrics port answers."""
    metrics_port = free_port()
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    base = {
        "TASKFLEET_API_URL": api_url,
        "TASKFLEET_WORKFLOWS": workflows,
        "TASKFLEET_STORAGE_URL": (tmp_path / "storage").as_uri(),
        "TASKFLEET_WORK_DIR": str(work),
        "TASKFLEET_METRICS_PORT": str(metrics_port),
        "TASKFLEET_FETCH_WAIT_S": "1",
        "TASKFLEET_LOG_FORMAT": "text",
    }
    base.update({k: str(v) for k, v in env.items()})
    return ServerProcess("consumer", [], base, "/metrics", metrics_port)


def wait_done(client: httpx.Client, task_id: str, timeout_s: float = 120) -> dict:
    """Poll a task over HTTP until it is terminal."""
    deadline = time.monotonic() + timeout_s
    task: dict = {}
    while time.monotonic() < deadline:
        task = client.get(f"/api/tasks/{task_id}").json()
        if task["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish: {task}")


@contextmanager
def task_fleet(tmp_path: Path, workflow: str, **consumer_env: str) -> Iterator[httpx.Client]:
    """A task API on SQLite whose retries wait only a moment, and one consumer serving ``workflow``.

    Yields a client of the API; the model servers are the caller's (``consumer_env`` names them).
    """
    api = api_process(
        f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path, TASKFLEET_BACKOFF_BASE_S="0.05", TASKFLEET_BACKOFF_MAX_S="0.2"
    )
    with api, consumer_process(api.url, tmp_path, workflow, **consumer_env):
        with httpx.Client(base_url=api.url, timeout=30, trust_env=False) as client:
            yield client


class LiveServer:
    """A real uvicorn serving an app on a loopback port, in a thread of this process."""

    def __init__(self, app, *, wait_loaded: bool = True) -> None:
        import uvicorn

        self.wait_loaded = wait_loaded
        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        while self.wait_loaded and httpx.get(self.url + "/health", trust_env=False).json()["status"] == "loading":
            if time.monotonic() > deadline:
                raise RuntimeError("models did not load")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
