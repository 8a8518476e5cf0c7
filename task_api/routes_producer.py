"""Producer routes: create, read, list, cancel, retry tasks; seed-style aliases; /process; files."""

from __future__ import annotations

import json
import uuid
from typing import Any, Optional

from fastapi import APIRouter, Body, Depends, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from task_api.auth import producer_of
from task_api.body import JsonBodyRoute
from task_api.events import task_stream
from task_api.queue import SYNC_PRIORITY, Queue, request_hash
from task_api.schemas import (
    IDEMPOTENCY_KEY,
    Accepted,
    CreateTask,
    CreateTasks,
    ErrorBody,
    FileUploaded,
    SetPriority,
    Status,
    Task,
    TaskBatch,
    TaskPage,
    TaskWithHistory,
    Text,
    attempt_json,
    parse_body,
    task_json,
)
from task_api.services import Services
from taskfleet.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, TaskfleetError
from taskfleet.states import TERMINAL
from taskfleet.workflows import Workflow

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422)}
IDEMPOTENCY_HEADER = {
    "name": "idempotency-key", "in": "header", "required": False,
    "schema": {"anyOf": [{"type": "string", "maxLength": 200}, {"type": "null"}], "title": "Idempotency-Key"},
}  # fmt: skip
CREATE_TASK_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateTask"}}},
    },
    "parameters": [IDEMPOTENCY_HEADER],
}
# Task options a seed-style alias body carries beside the workflow's input fields, spelled as in
# the /api/tasks body. A workflow whose input declares one of these names keeps it as input.
ALIAS_OPTIONS = tuple(name for name in CreateTask.model_fields if name not in ("workflow", "input"))


# How long a /process call waits for its task by default (TASKFLEET_MAX_PROCESS_WAIT_S caps it).
PROCESS_WAIT_S = 120.0


def header_idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header, held to the rules of the body's ``idempotency_key``."""
    key = request.headers.get("idempotency-key")
    if not key:
        return None
    try:
        return IDEMPOTENCY_KEY.validate_python(key)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("header", "idempotency-key")} for err in exc.errors(include_url=False)]
        ) from None


def alias_create_body(workflow: Workflow, fields: dict[str, Any], request: Request) -> CreateTask:
    """An alias body as the /api/tasks body it stands for: task options out of the top level,
    the rest the workflow's input. The body's key wins over the header's, as on /api/tasks."""
    own = workflow.input_fields
    options = {name: fields[name] for name in ALIAS_OPTIONS if name in fields and name not in own}
    data = {"workflow": workflow.name, "input": {k: v for k, v in fields.items() if k not in options}, **options}
    if not options.get("idempotency_key") and (header_key := header_idempotency_key(request)):
        data["idempotency_key"] = header_key
    try:
        return CreateTask.model_validate(data)
    except ValidationError as exc:
        # An option's error is located where the caller put it: at the top of the body.
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None


def producer_router(svc: Services) -> APIRouter:
    router = APIRouter(dependencies=[Depends(svc.auth.require("producer"))], responses=ERRORS, route_class=JsonBodyRoute)
    queue: Queue = svc.queue

    def spec_of(
        body: CreateTask, producer: str, *, notify_done: bool = False, priority: int | None = None
    ) -> dict[str, Any]:
        """Validate a create request against its workflow; the queue's insert spec."""
        workflow = svc.workflows.get(body.workflow)
        if body.webhook_url is not None:
            svc.url_guard.parse(body.webhook_url)  # scheme and shape now; addresses when sending
        return {
            "workflow": workflow.name,
            "input": workflow.validate_input(body.input),
            "priority": priority if priority is not None else body.priority,
            "max_attempts": body.max_attempts or workflow.max_attempts,
            "timeout_s": body.timeout_s or workflow.timeout_s,
            "webhook_url": body.webhook_url,
            "metadata": body.metadata,
            "idempotency_key": body.idempotency_key,
            "body_hash": request_hash(body.model_dump(exclude={"idempotency_key"})) if body.idempotency_key else None,
            "notify_done": notify_done,
            "producer": producer,
            "pending_ttl_s": body.expires_in_s or svc.settings.pending_ttl_s,
        }

    def count_created(results: list[tuple[dict, bool]]) -> None:
        for row, created in results:
            if created:
                svc.metrics.created.labels(row["workflow"]).inc()

    async def submit(body: CreateTask, producer: str, **kwargs: Any) -> tuple[dict, bool]:
        result = await queue.create(**spec_of(body, producer, **kwargs))
        count_created([result])
        return result

    # The hottest route parses its own body and header: FastAPI's parameter solving cost about
    # 0.1 ms of a create (a third of its in-process time). The schema it documents is the same.
    @router.post("/api/tasks", status_code=201, response_model=Task, openapi_extra=CREATE_TASK_OPENAPI)
    async def create_task(request: Request) -> JSONResponse:
        body = parse_body(CreateTask, await request.body())
        if not body.idempotency_key and (idempotency_key := header_idempotency_key(request)):
            body = body.model_copy(update={"idempotency_key": idempotency_key})
        row, created = await submit(body, producer_of(request))
        return JSONResponse(task_json(row), status_code=201 if created else 200)

    @router.post("/api/tasks/batch", status_code=201, response_model=TaskBatch)
    async def create_tasks(request: Request, body: CreateTasks) -> JSONResponse:
        """Many tasks in one request and one transaction: all are created, or none (a bad
        item is a 422 naming its index). For producers that enqueue in bulk, this saves the
        per-request cost that dominates on a small machine."""
        specs = []
        for index, item in enumerate(body.tasks):
            try:
                specs.append(spec_of(item, producer_of(request)))
            except TaskfleetError as exc:
                exc.message = f"tasks[{index}]: {exc.message}"
                raise
        results = await queue.create_many(specs)
        count_created(results)
        created = any(c for _, c in results)
        return JSONResponse({"tasks": [task_json(r) for r, _ in results]}, status_code=201 if created else 200)

    async def task_detail(task_id: str) -> dict[str, Any]:
        row, history = await queue.with_history(task_id)
        body = {**task_json(row), "history": [attempt_json(r) for r in history]}
        stages = await queue.stages(row)
        if stages is not None:  # a pipeline's GET adds its stages; other tasks' GET is unchanged
            body["stages"] = stages
        return body

    @router.get("/api/tasks/{task_id}", response_model=TaskWithHistory)
    async def get_task(task_id: Text) -> JSONResponse:
        return JSONResponse(await task_detail(task_id))

    async def detail_or_none(task_id: str) -> dict[str, Any] | None:
        try:
            return await task_detail(task_id)
        except NotFound:  # removed by retention while watched
            return None

    @router.get(
        "/api/tasks/{task_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "`event: task` with the task's JSON, now and on every change, until it is terminal"}},
    )
    async def task_events(task_id: Text) -> StreamingResponse:
        await queue.get(task_id)  # an unknown task is a 404, not an empty stream
        return StreamingResponse(
            task_stream(queue.events, task_id, detail_or_none, max_s=svc.settings.events_max_s),
            media_type="text/event-stream",
            # Proxies (nginx) must pass each event on as it comes, not buffer the stream.
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/api/tasks", response_model=TaskPage)
    async def list_tasks(
        status: Optional[Status] = None,
        workflow: Optional[Text] = Query(None, max_length=100),
        limit: int = Query(50, ge=1, le=500),
        cursor: Optional[str] = Query(None, max_length=40),
        producer: Optional[Text] = Query(None, max_length=100),
    ) -> dict[str, Any]:
        rows, next_cursor = await queue.list(
            status=status, workflow=workflow, limit=limit, cursor=cursor, producer=producer
        )
        return {"items": [task_json(r) for r in rows], "next_cursor": next_cursor}

    @router.post("/api/tasks/{task_id}/cancel", response_model=Task)
    async def cancel_task(task_id: Text) -> dict[str, Any]:
        return task_json(await queue.cancel(task_id))

    @router.post("/api/tasks/{task_id}/retry", response_model=Task)
    async def retry_task(task_id: Text) -> dict[str, Any]:
        return task_json(await queue.retry(task_id))

    @router.post("/api/tasks/{task_id}/priority", response_model=Task)
    async def set_priority(task_id: Text, body: SetPriority) -> dict[str, Any]:
        """A PENDING task's new priority (the next claim orders by it); any other state is a
        409 ``not_pending``."""
        return task_json(await queue.set_priority(task_id, body.priority))

    @router.post(
        "/api/tasks/{task_id}/rerun", status_code=201, response_model=Task,
        openapi_extra={"parameters": [IDEMPOTENCY_HEADER]},
    )  # fmt: skip
    async def rerun_task(request: Request, task_id: Text) -> JSONResponse:
        """A new task with the finished task's workflow, input and settings (priority,
        max_attempts, timeout_s, webhook_url, metadata, expires_in_s), ``rerun_of`` naming it,
        owned by the caller's producer;
        a pipeline reruns as a whole pipeline. The input is checked again against the
        workflow as it is now. An ``Idempotency-Key`` header makes the call safe to repeat."""
        original = await queue.get(task_id)
        if original["status"] not in TERMINAL:
            raise Conflict(f"task is {original['status']}; only a finished task can be rerun", code="not_finished")
        if original["parent_id"] is not None:
            raise Conflict(f"task is a stage of pipeline {original['parent_id']}: rerun the pipeline", code="invalid_state")
        workflow = svc.workflows.get(original["workflow"])
        key = header_idempotency_key(request)
        spec = {
            "workflow": workflow.name,
            "input": workflow.validate_input(json.loads(original["input"])),
            "priority": original["priority"],
            "max_attempts": original["max_attempts"],
            "timeout_s": original["timeout_s"],
            "webhook_url": original["webhook_url"],
            "metadata": json.loads(original["metadata"]),
            "idempotency_key": key,
            "body_hash": request_hash({"rerun_of": task_id}) if key else None,
            "pending_ttl_s": original["pending_ttl_s"],
            "rerun_of": task_id,
            # The rerun is the caller's task: it counts for the producer who asked for it.
            "producer": producer_of(request),
        }
        row, created = await queue.create(**spec)
        count_created([(row, created)])
        return JSONResponse(task_json(row), status_code=201 if created else 200)

    @router.post(
        "/api/{route}/create-task", status_code=201, response_model=Accepted,
        openapi_extra={"parameters": [IDEMPOTENCY_HEADER]},
    )  # fmt: skip
    async def create_by_alias(request: Request, route: str, fields: dict[str, Any] = Body(...)) -> JSONResponse:
        """The workflow's input fields at the top level, with the task options of /api/tasks
        (priority, webhook_url, idempotency_key, ...) beside them, or the ``Idempotency-Key``
        header. A repeated key answers 200 with the first task."""
        workflow = svc.workflows.by_alias(route)
        row, created = await submit(alias_create_body(workflow, fields, request), producer_of(request))
        return JSONResponse({"task_id": row["id"], "status": row["status"]}, status_code=201 if created else 200)

    @router.post(
        "/api/{route}/process",
        responses={202: {"model": Accepted}, 502: {"model": ErrorBody}},
    )
    async def process(
        request: Request,
        route: str,
        fields: dict[str, Any] = Body(...),
        wait_s: float = Query(
            min(PROCESS_WAIT_S, svc.settings.max_process_wait_s), ge=0, le=svc.settings.max_process_wait_s
        ),
    ) -> JSONResponse:
        workflow = svc.workflows.by_alias(route)
        row, _ = await submit(
            CreateTask(workflow=workflow.name, input=fields), producer_of(request), notify_done=True,
            priority=SYNC_PRIORITY,
        )
        row = await queue.wait_finished(row["id"], wait_s)
        task_id = row["id"]
        if row["status"] == "COMPLETED":
            return JSONResponse(task_json(row)["output"])
        if row["status"] in ("FAILED", "CANCELLED"):
            error = task_json(row)["error"] or {"code": "failed", "message": ""}
            status = 422 if row["status"] == "FAILED" and error.get("retryable") is False else 502
            body = {"error": {"code": error.get("code", "failed"), "message": error.get("message", "")}, "task_id": task_id}
            return JSONResponse(body, status_code=status)
        return JSONResponse({"task_id": task_id, "status": row["status"]}, status_code=202)

    @router.post("/api/files", status_code=201, response_model=FileUploaded)
    async def upload_file(file: UploadFile) -> dict[str, str]:
        storage = svc.storage
        limit = int(svc.settings.max_input_mb * 1024 * 1024)
        name = _safe_name(file.filename or "upload.bin")
        key = storage.output_key("uploads", uuid.uuid4().hex, name)
        seen = 0

        async def chunks():
            nonlocal seen
            while chunk := await file.read(1 << 20):
                seen += len(chunk)
                if seen > limit:
                    raise PayloadTooLarge(f"file is over {svc.settings.max_input_mb:g} MB", code="payload_too_large")
                yield chunk

        stored = await storage.put_stream(key, chunks(), content_type=file.content_type or None)
        return {"url": stored.url}

    return router


def _safe_name(filename: str) -> str:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:120].lstrip(".")
    if not name:
        raise BadRequest("file name is empty after cleaning", code="invalid_filename")
    return name
