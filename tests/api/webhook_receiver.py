"""A real HTTP server that records webhook deliveries, for the tests that expect them."""

from __future__ import annotations

import asyncio
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from support import free_port


def webhook_api_env(secret: str) -> dict[str, str]:
    """The API settings a webhook test runs under: signed, fast retries, the loopback receiver allowed."""
    return {
        "TASKFLEET_WEBHOOK_SECRET": secret,
        "TASKFLEET_WEBHOOK_RETRY_DELAYS": "0.3,0.6,1.2",
        "TASKFLEET_URL_ALLOWLIST": "127.0.0.1",
        "TASKFLEET_REAP_INTERVAL_S": "0.2",
    }


class Receiver:
    """Records every POST to /hook and fails the first ``fail_first`` of them."""

    def __init__(self, fail_first: int = 0, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[tuple[float, bytes, dict]] = []
        self.fail_first = fail_first
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            self.received.append((time.time(), body, dict(request.headers)))
            if len(self.received) <= self.fail_first:
                return Response(status_code=500)
            return Response(status_code=204)

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> "Receiver":
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
