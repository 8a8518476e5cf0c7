"""The task API application factory: wiring, error shape, body limits, background loops."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from task_api.auth import Authenticator
from task_api.bodylimit import BodyLimitMiddleware
from task_api.console import console_router
from task_api.events import TaskEvents
from task_api.fleet import Fleet
from task_api.hot_routes import HotRoutes
from task_api.housekeeping import purge_forever, reap_forever
from task_api.metrics import ApiMetrics
from task_api.openapi import install_openapi
from task_api.pipeline_runs import PipelineRunner
from task_api.producers import Producers
from task_api.queue import Queue
from task_api.routes_admin import admin_router
from task_api.routes_consumer import consumer_router
from task_api.routes_ops import ops_router
from task_api.routes_producer import producer_router
from task_api.services import Services
from task_api.settings import ApiSettings, split_csv
from task_api.store import faults as db_faults
from task_api.store import open_store
from task_api.wakeup import Dispatcher
from task_api.webhooks import WebhookSender
from taskfleet import pipelines as pipeline_defs
from taskfleet.errors import TaskfleetError, error_body
from taskfleet.logs import RequestLogMiddleware
from taskfleet.urlguard import UrlGuard
from taskfleet.workflows import WorkflowRegistry

log = logging.getLogger("taskfleet.api")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, *, retry_after_s: float | None = None
) -> JSONResponse:
    body = error_body(code, message, details)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if retry_after_s is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    return JSONResponse(jsonable_encoder(body, custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")}), status_code=status, headers=headers)


def open_storage_for(settings: ApiSettings) -> Any:
    from storage import open_storage  # the storage package; its cloud SDKs load lazily

    return open_storage(settings.storage_url, public_base_url=settings.base_url)


def create_app(
    settings: ApiSettings | None = None,
    *,
    workflows: WorkflowRegistry | None = None,
    storage: Any = None,
) -> FastAPI:
    settings = settings or ApiSettings()
    # Pipelines are checked before anything else starts: a bad definition stops the API here
    # (PipelineLoadError, one line naming the file), not at some producer's create.
    workflows = workflows or WorkflowRegistry.from_entry_points()
    definitions = pipeline_defs.load(workflows.names(), settings.pipelines_dir or None)
    producers = Producers(weights=settings.weights, rates=settings.rates, max_pending=settings.max_pending)
    runner = PipelineRunner(definitions, {wf.name: wf for wf in workflows.all()}, settings.max_fanout, producers=producers)
    auth = Authenticator(settings.token_sets, host=settings.host, producer_names=settings.producer_names)
    store = open_store(settings.database_url)
    dispatcher = Dispatcher()
    events = TaskEvents()
    metrics = ApiMetrics()
    guard = UrlGuard.from_setting(split_csv(settings.url_allowlist))
    webhooks = WebhookSender(
        store,
        secret=settings.webhook_secret,
        retry_delays=settings.webhook_delays,
        guard=guard,
        timeout_s=settings.webhook_timeout_s,
    )
    queue = Queue(
        store,
        dispatcher,
        lease_s=settings.lease_s,
        backoff_base_s=settings.backoff_base_s,
        backoff_max_s=settings.backoff_max_s,
        on_finished=metrics.observe_finished,
        on_webhook=webhooks.poke,
        pipelines=runner,
        events=events,
        producers=producers,
    )
    svc = Services(
        settings=settings,
        queue=queue,
        auth=auth,
        # Producers reach pipelines as they reach any workflow (name, route alias).
        workflows=WorkflowRegistry({**{wf.name: wf for wf in workflows.all()}, **definitions}),
        metrics=metrics,
        url_guard=guard,
        webhooks=webhooks,
        fleet=Fleet(store, ttl_s=settings.consumer_ttl_s, report_every_s=settings.consumer_report_s),
        storage=storage if storage is not None else open_storage_for(settings),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await store.connect()
        def listen_state(up: bool) -> None:
            metrics.listen_connected.set(up)
            # Other replicas' changes reach this one's waiters only while it listens.
            dispatcher.signals_complete = up

        await store.listen(dispatcher.on_notify, listen_state)
        if store.dialect == "sqlite":
            dispatcher.signals_complete = True  # one process owns the file: it makes every change
        loops = [
            asyncio.create_task(reap_forever(queue, metrics, settings.reap_interval_s)),
            asyncio.create_task(
                purge_forever(queue, svc.fleet, settings.retention_days * 86400, settings.retention_interval_s)
            ),
            asyncio.create_task(webhooks.run()),
            asyncio.create_task(events.recheck_forever(store, settings.events_recheck_s)),
        ]
        # Everything made at start (routes, schemas, imported modules) lives as long as the
        # process: out of the collector's view, a full collection no longer walks it (a 50 ms
        # pause here, in the middle of some request's pickup).
        gc.freeze()
        log.info("task API ready on %s (database: %s)", settings.base_url, store.dialect)
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await webhooks.aclose()
            await queue.aclose()
            await store.close()

    # FastAPI's OpenTelemetry hooks look for configured providers on every request (~15 µs);
    # this process exports Prometheus metrics and configures no OpenTelemetry provider.
    app = FastAPI(
        title="taskfleet task API", version="0.1.0", lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # The routers' routes go straight onto the app: each already carries its router's auth
    # dependency and responses, and FastAPI 0.16x's include_router keeps a layer of lazily
    # resolved wrappers that every request walks (about 0.1 ms of a create on this machine).
    # The tag names the token a route takes; the OpenAPI document's security follows it.
    routers = (
        ("operations", ops_router(svc)), ("producer", producer_router(svc)), ("consumer", consumer_router(svc)),
        ("admin", admin_router(svc)), ("console", console_router(svc)),
    )
    for tag, router in routers:
        for route in router.routes:
            route.tags = [tag]
        app.router.routes.extend(router.routes)
    app.state.services = svc
    # Innermost of ours: the hot routes are still under the body limits and the request log.
    app.add_middleware(
        HotRoutes, routes=app.router.routes, auth=auth, max_wait_s=settings.max_wait_s,
        max_process_wait_s=settings.max_process_wait_s,
        exception_handlers=app.exception_handlers,
    )
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=int(settings.max_body_mb * 1024 * 1024),
        limits={"/api/files": int(settings.max_input_mb * 1024 * 1024) + 64 * 1024},
    )
    # Outermost, so that every answer (a 413 included) carries its X-Request-ID.
    app.add_middleware(RequestLogMiddleware, logger="taskfleet.api.http")

    @app.exception_handler(TaskfleetError)
    async def _taskfleet_error(_: Request, exc: TaskfleetError) -> JSONResponse:
        return error_response(
            exc.status, exc.code, exc.message, exc.details, retry_after_s=getattr(exc, "retry_after_s", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "request body is not valid JSON")
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
        # A NUL anywhere it would reach a text column gets its own code, whichever field it is in.
        code = "nul_character" if any(e.get("type") == "nul_character" for e in errors) else "validation_error"
        return error_response(422, code, "request does not match the schema", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The stores translate their faults where they arise; a driver error that still got
        # here (a path that bypassed them) is a 503 all the same, not a "broken" 500.
        if (fault := db_faults.classify(exc)) is not None:
            log.warning("database fault outside the store: %s", exc, exc_info=exc)
            return error_response(fault.status, fault.code, fault.message, retry_after_s=fault.retry_after_s)
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")

    install_openapi(app, svc.workflows)
    return app
