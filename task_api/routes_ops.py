"""Operational routes: liveness, readiness, Prometheus metrics, and locally stored files."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from task_api.services import Services
from taskfleet.errors import DatabaseUnavailable, NotFound, Unauthorized


def ops_router(svc: Services) -> APIRouter:
    router = APIRouter()

    @router.get("/health")  # the process alone: 200 while the database is down (see /ready)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready", responses={503: {"description": "database unreachable"}})
    async def ready() -> JSONResponse:
        try:
            await svc.queue.ping()
        except Exception as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from None
        return JSONResponse({"status": "ready"})

    @router.get("/metrics", responses={401: {"description": "metrics token required"}})
    async def metrics(request: Request) -> Response:
        token = svc.settings.metrics_token
        if token:
            presented = request.headers.get("authorization", "").partition(" ")[2].strip()
            if not hmac.compare_digest(presented.encode(), token.encode()):
                raise Unauthorized("metrics token required")
        return Response(await svc.metrics.render(svc.queue), media_type=CONTENT_TYPE_LATEST)

    @router.get("/files/{key:path}", responses={404: {"description": "no such file"}})
    async def local_file(key: str) -> FileResponse:
        # Results of the local stack, as a public bucket would serve them: by unguessable key.
        storage = svc.storage
        if storage is None or storage.provider != "local":
            raise NotFound("this API serves no files: storage is not local")
        try:
            path = storage.local_path(key)
        except Exception:
            raise NotFound("no such file") from None
        if not path.is_file():
            raise NotFound("no such file")
        return FileResponse(path)

    return router
