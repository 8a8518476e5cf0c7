"""Admin routes: the consumer registry and the per-workflow stats (the console's overview)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from task_api.routes_producer import ERRORS
from task_api.schemas import ConsumerList, StatsResponse, iso
from task_api.services import Services


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

    return router
