"""The built-in ``echo`` processor: returns its input's ``data``; can sleep and fail on request."""

from __future__ import annotations

import asyncio
from typing import Any

from consumer.context import TaskContext
from taskfleet.errors import TaskfleetError


async def process(ctx: TaskContext) -> dict[str, Any]:
    sleep_s = float(ctx.input.get("sleep_s") or 0)
    if sleep_s > 0:
        # Sleep in steps so progress moves and a cancel or timeout lands between them.
        steps = max(1, min(20, int(sleep_s / 0.1)))
        for i in range(steps):
            await asyncio.sleep(sleep_s / steps)
            await ctx.progress(100.0 * (i + 1) / steps, "sleeping")
    fail = ctx.input.get("fail")
    if fail == "fatal":
        raise TaskfleetError("echo asked to fail for good", code="echo_fatal", status=422, retryable=False)
    if fail == "retryable":
        raise TaskfleetError("echo asked to fail this attempt", code="echo_retryable", status=503, retryable=True)
    return {"data": ctx.input.get("data")}
