"""Compute accounting: the seconds each request held a device slot, told to the caller.

Every ``GpuSlots.slot()`` a request enters adds the time it held the slot (not the time it
queued for one) to that request's ``ComputeMeter``. The answer carries the total in the
``X-Compute-Seconds`` response header when its headers go out after the last slot was given
back (TTS, Flux, every error answered before a body); a response whose body streams while the
slot is still held (face swap's multipart stream) marks the meter ``in_body`` and puts
``compute_s`` in its own final part instead, so a caller adds the header and the body field and
never counts a second twice. The consumer sums them per task (``consumer/model_client.py``).

The meter lives in a context variable that the middleware sets per request: tasks a route
starts copy the context, so they add to the same meter.
"""

from __future__ import annotations

import contextvars
from typing import Any

HEADER = "X-Compute-Seconds"


class ComputeMeter:
    """One request's slot seconds so far, and how many of its slots are still queued or held."""

    __slots__ = ("seconds", "open", "in_body")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.open = 0
        self.in_body = False  # the response reports compute_s in its body: no header


current_meter: contextvars.ContextVar[ComputeMeter | None] = contextvars.ContextVar("taskfleet_compute_meter", default=None)


def meter() -> ComputeMeter | None:
    """The meter of the request being served here (None outside a request)."""
    return current_meter.get()


class ComputeHeaderMiddleware:
    """Gives each HTTP request its meter and answers ``X-Compute-Seconds`` where the figure is
    final when the headers go out (no slot of the request still queued or held)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_meter = ComputeMeter()
        token = current_meter.set(request_meter)

        async def send_with_compute(message: dict) -> None:
            if message["type"] == "http.response.start" and not request_meter.in_body and request_meter.open == 0:
                headers = list(message.get("headers", ()))
                headers.append((HEADER.lower().encode(), f"{request_meter.seconds:.6f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_compute)
        finally:
            current_meter.reset(token)
