"""Admin routes: the consumer registry, the per-workflow stats (the console's overview), and
compute usage by producer or workflow."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Literal, Optional

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from task_api.routes_producer import ERRORS
from task_api.schemas import ConsumerList, StatsResponse, UsageResponse, iso
from task_api.services import Services
from taskfleet.errors import InvalidInput

USAGE_DEFAULT_WINDOW_S = 86400.0


def _epoch(value: datetime) -> float:
    # A time without a zone is UTC, as every time the API writes is.
    return (value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)).timestamp()


def admin_router(svc: Services) -> APIRouter:
    router = APIRouter(dependencies=[Depends(svc.auth.require("admin"))], responses=ERRORS)

    @router.get("/api/consumers", response_model=ConsumerList)
    async def consumers() -> JSONResponse:
        """The consumers that reported within TASKFLEET_CONSUMER_TTL_S, with their model servers."""
        return JSONResponse({"consumers": await svc.fleet.consumers()})

    @router.get("/api/stats", response_model=StatsResponse)
    async def stats() -> JSONResponse:
        """Per workflow: open counts, finishes over the last 5 min and hour, wait / run percentiles."""
        workflows = await svc.fleet.stats(svc.workflows.names())
        return JSONResponse({"workflows": workflows, "generated_at": iso(time.time())})

    @router.get("/api/usage", response_model=UsageResponse)
    async def usage(
        since: Optional[datetime] = Query(None, description="ISO 8601 time or epoch seconds; default 24 h before until"),
        until: Optional[datetime] = Query(None, description="ISO 8601 time or epoch seconds; default now"),
        group_by: Literal["producer", "workflow"] = "producer",
    ) -> JSONResponse:
        """Model-server compute seconds of the attempts that ended in [since, until), by the
        task's producer or workflow (a pipeline's stage tasks under their own workflows).
        Finished tasks' history goes with retention (TASKFLEET_RETENTION_DAYS)."""
        end = _epoch(until) if until is not None else time.time()
        start = _epoch(since) if since is not None else end - USAGE_DEFAULT_WINDOW_S
        if start > end:
            raise InvalidInput("since is after until", code="invalid_time_range")
        groups = await svc.queue.usage(group_by, start, end)
        return JSONResponse({
            "group_by": group_by, "since": iso(start), "until": iso(end),
            "total_compute_s": round(sum(g["compute_s"] for g in groups), 6), "groups": groups,
        })  # fmt: skip

    return router
