"""A fake model server: a real uvicorn app on loopback that tests can make slow, answer 503,
drop connections or report unhealthy, through ``POST /_control``.

It uses the shared model-server base (``/health`` shape, GPU slots, error bodies), so the consumer
talks to it exactly as it talks to the real servers. ``POST /process`` echoes its form fields and
the size and SHA-256 of each uploaded file; ``GET /_stats`` tells what it has seen.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from model_servers.base import ModelState, install_common
from taskfleet.errors import InvalidInput, Unavailable


class Control(BaseModel):
    mode: str = "ok"  # ok | 503 | drop | 4xx | 500 | unhealthy
    delay_s: float = 0.0  # added to every /process call


def create_app(capacity: int = 1) -> FastAPI:
    app = FastAPI()
    state = ModelState("/nowhere", capacity)
    state.ready("cpu")
    control = Control()
    stats = {"calls": 0, "completed": 0, "max_concurrent": 0, "active": 0, "by_mode": {}}
    install_common(app, state)
    app.state.control = lambda: control
    app.state.stats = stats

    @app.post("/_control")
    async def set_control(body: Control) -> dict:
        nonlocal control
        control = body
        if body.mode == "unhealthy":
            state.failed("told to be unhealthy")
        else:
            state.ready("cpu")
        return body.model_dump()

    @app.get("/_stats")
    async def get_stats() -> dict:
        return stats

    @app.post("/process")
    async def process(request: Request):
        stats["calls"] += 1
        stats["by_mode"][control.mode] = stats["by_mode"].get(control.mode, 0) + 1
        if control.mode == "503":
            raise Unavailable("told to be busy", code="model_unavailable")
        state.require_ready()
        if control.mode == "4xx":
            raise InvalidInput("no face in the source image", code="no_face")
        if control.mode == "500":
            return JSONResponse({"error": {"code": "model_crashed", "message": "boom"}}, status_code=500)
        async with state.slots.slot():
            stats["active"] += 1
            stats["max_concurrent"] = max(stats["max_concurrent"], stats["active"])
            try:
                files = {}
                fields = {}
                if request.headers.get("content-type", "").startswith("multipart/"):
                    form = await request.form()
                    for key, value in form.multi_items():
                        if hasattr(value, "read"):
                            data = await value.read()
                            files[key] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                        else:
                            fields[key] = value
                else:
                    body = await request.body()
                    fields = await request.json() if body else {}
                delay = control.delay_s + float(fields.get("sleep_s", 0) or 0)
                if delay:
                    await asyncio.sleep(delay)
                stats["completed"] += 1
                return {"fields": fields, "files": files, "server_pid": os.getpid()}
            finally:
                stats["active"] -= 1

    @app.get("/stream")
    async def stream(n: int = 4, size: int = 1024):
        state.require_ready()

        async def chunks():
            for _ in range(n):
                yield b"z" * size

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    return app


def with_dropped_connections(app: FastAPI):
    """Outermost ASGI layer: in ``drop`` mode, promise a body, send a byte of it, then fail.

    Past the response start uvicorn cannot answer 500 any more; it can only cut the connection,
    which is what a crashing model server looks like to its client.
    """

    async def asgi(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/process" and app.state.control().mode == "drop":
            stats = app.state.stats
            stats["calls"] += 1
            stats["by_mode"]["drop"] = stats["by_mode"].get("drop", 0) + 1
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b"{", "more_body": True})
            raise ConnectionAbortedError("dropping the connection on purpose")
        await app(scope, receive, send)

    return asgi


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--capacity", type=int, default=1)
    args = p.parse_args(argv)
    uvicorn.run(with_dropped_connections(create_app(args.capacity)), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
