"""One log format for every taskfleet process (API, consumer, model servers), uvicorn's own lines
included: JSON lines for a log collector, or text for a terminal (``TASKFLEET_LOG_FORMAT``).

Each record carries the request id and the task id of the work it belongs to, from context
variables, so one task can be followed from the API through a consumer to a model server.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import uuid
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("json", "text")
REQUEST_ID_HEADER = "X-Request-ID"
TASK_ID_HEADER = "X-Task-ID"

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
current_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_task_id", default=None)
current_workflow: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_workflow", default=None)

# A caller's id is kept only when it is short and plain: it is written into every log line.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_id(value: str | None) -> str | None:
    """A caller-sent request or task id, or None when it is missing or unfit for a log line."""
    return value if value and _SAFE_ID.fullmatch(value) else None


class ContextFilter(logging.Filter):
    """Stamps each record with the request id, task id and workflow of the code that logs it,
    unless the call named them itself (``extra=``, where None means "none of this context")."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("request_id", request_id), ("task_id", current_task_id), ("workflow", current_workflow)):
            if name not in record.__dict__:
                setattr(record, name, var.get())
        return True


class _Json(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # Unset context (no request, no task) is left out rather than written as null.
        return {k: v for k, v in log_data.items() if v is not None}


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{k}={v}" for k in ("task_id", "request_id") if (v := getattr(record, k, None)))
        record.context = f" [{ids}]" if ids else ""
        return super().format(record)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return _Json(
            "{asctime}{levelname}{name}{message}", style="{",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger", "message": "msg"},
            json_default=str,
        )
    return _Text("%(asctime)s %(levelname)s %(name)s%(context)s %(message)s")


def setup_logging(level: str | int = "info", fmt: str = "json") -> None:
    """Route every record of the process (uvicorn's included) through one stderr handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # uvicorn's loggers hand their records to the root handler instead of printing their own way.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)


_TASK_IN_PATH = re.compile(r"/(tsk_[A-Za-z0-9]+)")


class RequestLogMiddleware:
    """Per HTTP request: the caller's ``X-Request-ID`` (or a new one) and ``X-Task-ID`` (or the task
    id in the path) in context for every line logged while serving it, the request id echoed in
    the response, and one line at debug when it ends. Plain ASGI: a few microseconds a request."""

    def __init__(self, app: Any, logger: str = "taskfleet.http") -> None:
        self.app = app
        self.log = logging.getLogger(logger)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = tid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = accepted_id(value.decode("latin-1"))
            elif name == b"x-task-id":
                tid = accepted_id(value.decode("latin-1"))
        rid = rid or new_request_id()
        if tid is None and (found := _TASK_IN_PATH.search(scope["path"])):
            tid = found[1]
        request_id.set(rid)
        current_task_id.set(tid)
        echoed = (b"x-request-id", rid.encode())
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug(
                    "%s %s %d", scope["method"], scope["path"], status,
                    extra={"method": scope["method"], "path": scope["path"], "status": status,
                           "duration_ms": round((time.perf_counter() - started) * 1000, 2)},
                )


def context_headers() -> dict[str, str]:
    """The request and task ids of the work in hand, as headers for the next hop."""
    headers = {}
    if rid := request_id.get():
        headers[REQUEST_ID_HEADER] = rid
    if tid := current_task_id.get():
        headers[TASK_ID_HEADER] = tid
    return headers


async def stamp_context_headers(request: Any) -> None:
    """An httpx request hook: carry the ids to the API and the model servers."""
    request.headers.update(context_headers())
