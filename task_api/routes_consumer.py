"""Consumer routes (the seed's /api/comm namespace): long-poll fetch, heartbeat, complete, fail, release.

Every write is fenced on the caller's lease: a stale lease gets 409 lease_lost and changes nothing.
These are the hot routes, so they hand back ready JSONResponses (the response models only
document them) instead of paying for a second validation of what the queue just produced.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from task_api.body import JsonBodyRoute
from task_api.queue import Queue
from task_api.routes_producer import ERRORS
from task_api.schemas import (
    CompleteMany,
    CompleteManyResponse,
    CompleteRequest,
    ConsumerReport,
    FailRequest,
    FetchResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    LeaseRequest,
    ReportAccepted,
    StatusResponse,
    Text,
    iso,
    task_json,
)
from task_api.services import Services
from taskfleet.errors import InvalidInput, TaskfleetError


# How long a fetch long-polls by default (TASKFLEET_MAX_WAIT_S caps it).
FETCH_WAIT_S = 20.0


def status_body(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_id": row["id"],
        "status": row["status"],
        "attempts": row["attempts"],
        "error": task_json(row)["error"],
    }


class HangUpWatch:
    """Notices that a long-polling consumer hung up, so a wake does not claim a task for nobody.

    It listens from the start, beside the wait, and answers at once when asked. Starlette's
    ``request.is_disconnected()`` asks the server at that moment instead, through an anyio
    cancel scope: about 0.1 ms between a create's wake-up and the claim."""

    def __init__(self, request: Request) -> None:
        self.gone = False
        self._task = asyncio.create_task(self._listen(request.receive))

    async def _listen(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True

    def __call__(self) -> bool:
        return self.gone

    def close(self) -> None:
        self._task.cancel()


def consumer_router(svc: Services) -> APIRouter:
    router = APIRouter(dependencies=[Depends(svc.auth.require("consumer"))], responses=ERRORS, route_class=JsonBodyRoute)
    queue: Queue = svc.queue
    attempts = svc.metrics.attempts
    count_compute = svc.metrics.count_compute

    def leased_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**task_json(r), "lease": {"id": r["lease_id"], "expires_at": iso(r["lease_expires_at"])}}
            for r in rows
        ]

    async def long_poll(request: Request, workflow: list[str], consumer_id: str, host: str | None, limit: int,
                        wait_s: float, wake_on_finish: bool) -> list[dict[str, Any]]:
        hang_up = HangUpWatch(request)
        try:
            return await queue.fetch(
                workflow,
                consumer_id=consumer_id,
                host=host or (request.client.host if request.client else None),
                limit=limit,
                wait_s=wait_s,
                gone=hang_up,
                wake_on_finish=wake_on_finish,
            )
        finally:
            hang_up.close()

    @router.get(
        "/api/comm/task/fetch",
        response_model=FetchResponse,
        responses={204: {"description": "no task within wait_s"}},
    )
    async def fetch(
        request: Request,
        workflow: list[Text] = Query(default=[], max_length=50),
        # Annotated: with a Query() default, FastAPI drops the NUL check a bare Text carries.
        consumer_id: Annotated[Text, Query(min_length=1, max_length=200)] = "anonymous",
        host: Optional[Text] = Query(None, max_length=255),
        limit: int = Query(1, ge=1, le=100),
        wait_s: float = Query(min(FETCH_WAIT_S, svc.settings.max_wait_s), ge=0, le=svc.settings.max_wait_s),
        wake_on_finish: bool = Query(
            False, description="answer 204 early when one of this consumer's leases ends (in this API process)"
        ),
    ) -> Response:
        for name in workflow:
            svc.workflows.get(name)  # an unknown workflow is a 422, not an endless empty wait
        rows = await long_poll(request, workflow, consumer_id, host, limit, wait_s, wake_on_finish)
        if not rows:
            return Response(status_code=204)
        return JSONResponse({"tasks": leased_json(rows)})

    @router.post("/api/comm/task/{task_id}/heartbeat", response_model=HeartbeatResponse)
    async def heartbeat(task_id: Text, body: HeartbeatRequest) -> JSONResponse:
        progress = body.progress.model_dump() if body.progress is not None else None
        result = await queue.heartbeat(task_id, body.lease_id, progress)
        if result["cancel_requested"]:
            attempts.labels(result["workflow"], "cancelled").inc()
        return JSONResponse({"lease_expires_at": iso(result["lease_expires_at"]), "cancel_requested": result["cancel_requested"]})

    @router.post("/api/comm/task/{task_id}/complete", response_model=StatusResponse)
    async def complete(task_id: Text, body: CompleteRequest) -> JSONResponse:
        row = await queue.complete(task_id, body.lease_id, body.output, body.compute_s)
        attempts.labels(row["workflow"], "completed").inc()
        count_compute(row, body.compute_s)
        return JSONResponse(status_body(row))

    @router.post("/api/comm/tasks/complete", response_model=CompleteManyResponse)
    async def complete_many(request: Request, body: CompleteMany) -> JSONResponse:
        """Several completions in one request and one transaction, each fenced on its own
        lease: a lost lease is reported for that item (``lease_lost``) and changes nothing.

        With ``fetch``, the same request is then the consumer's next fetch: once the
        completions are committed it claims (waiting up to ``wait_s``, as the fetch route
        does) and answers the new leases in ``tasks`` beside the results."""
        fetch = body.fetch
        if fetch is not None:
            if fetch.wait_s > svc.settings.max_wait_s:
                raise InvalidInput(f"fetch.wait_s may be at most {svc.settings.max_wait_s:g}", code="validation_error")
            for name in fetch.workflow:
                svc.workflows.get(name)  # an unknown workflow is refused before anything is completed
        rows = await queue.complete_many([(i.task_id, i.lease_id, i.output, i.compute_s) for i in body.items])
        results = []
        for item, row in zip(body.items, rows):
            if isinstance(row, TaskfleetError):
                results.append({"task_id": item.task_id, "error": {"code": row.code, "message": row.message}})
            else:
                attempts.labels(row["workflow"], "completed").inc()
                count_compute(row, item.compute_s)
                results.append({"task_id": item.task_id, "status": row["status"]})
        if fetch is None:
            return JSONResponse({"results": results})
        leased = await long_poll(request, fetch.workflow, fetch.consumer_id, fetch.host, fetch.limit, fetch.wait_s,
                                 fetch.wake_on_finish)
        return JSONResponse({"results": results, "tasks": leased_json(leased)})

    @router.post("/api/comm/task/{task_id}/fail", response_model=StatusResponse)
    async def fail(task_id: Text, body: FailRequest) -> JSONResponse:
        error = {**body.error.model_dump(), "retryable": body.retryable}
        row = await queue.fail(
            task_id, body.lease_id, error=error, retryable=body.retryable, retry_after_s=body.retry_after_s,
            compute_s=body.compute_s,
        )
        attempts.labels(row["workflow"], "failed").inc()
        count_compute(row, body.compute_s)
        return JSONResponse(status_body(row))

    @router.post("/api/comm/task/{task_id}/release", response_model=StatusResponse)
    async def release(task_id: Text, body: LeaseRequest) -> JSONResponse:
        row = await queue.release(task_id, body.lease_id)
        attempts.labels(row["workflow"], "released").inc()
        return JSONResponse(status_body(row))

    @router.post("/api/comm/consumers/report", response_model=ReportAccepted)
    async def report(body: ConsumerReport) -> JSONResponse:
        """A consumer's report of itself and its model servers; the answer says when to send the next."""
        await svc.fleet.report(body.model_dump())
        return JSONResponse({"report_every_s": svc.fleet.report_every_s})

    return router
