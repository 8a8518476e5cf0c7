"""Request and response models of the task API's HTTP boundary, and the task and attempt
JSON the responses are built from stored rows."""

from __future__ import annotations

import functools
import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from task_api.body import parse_json

Status = Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]
MAX_PRIORITY = 1000
MAX_PENDING_TTL_S = 366 * 86400.0  # expires_in_s: up to a year, as TASKFLEET_PENDING_TTL_S
# A compute report is one attempt's slot seconds; more than its longest timeout_s (a week)
# is not a measurement.
MAX_COMPUTE_S = 7 * 86400.0
M = TypeVar("M", bound=BaseModel)


def _no_nul(value: str) -> str:
    # Postgres text cannot hold NUL (asyncpg refuses the query with a 500), SQLite can: refused
    # here, so both databases give the same 422. Inside JSON values (input, output...) a NUL
    # is stored escaped and is fine.
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "String should not contain NUL characters")
    return value


# A string kept in a text column as it is: ids, keys, names, URLs (path and query parameters too).
Text = Annotated[str, AfterValidator(_no_nul)]
IdempotencyKey = Annotated[Text, Field(min_length=1, max_length=200)]
# For the Idempotency-Key header, which must pass what the body's field passes.
IDEMPOTENCY_KEY = TypeAdapter(IdempotencyKey)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateTask(Strict):
    workflow: Text = Field(min_length=1, max_length=100)
    input: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    max_attempts: Optional[int] = Field(None, ge=1, le=100)
    timeout_s: Optional[float] = Field(None, gt=0, le=7 * 86400)
    webhook_url: Optional[Text] = Field(None, min_length=1, max_length=2048)
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: Optional[IdempotencyKey] = None
    expires_in_s: Optional[float] = Field(
        None, gt=0, le=MAX_PENDING_TTL_S,
        description="end the task FAILED `expired` if it is still PENDING this long after its create "
        "(default TASKFLEET_PENDING_TTL_S; unset: never)",
    )


class SetPriority(Strict):
    priority: int = Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)


class CreateTasks(Strict):
    tasks: list[CreateTask] = Field(min_length=1, max_length=500)


class Progress(Strict):
    percent: float = Field(0, ge=0, le=100)
    message: str = Field("", max_length=2000)


class ErrorInfo(BaseModel):
    code: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    message: str = Field("", max_length=20_000)


class Attempt(BaseModel):
    lease_id: str
    consumer_id: Optional[str]
    host: Optional[str]
    started_at: str
    ended_at: Optional[str]
    outcome: Optional[str]
    error: Optional[dict[str, Any]]


class Usage(BaseModel):
    compute_s: float = Field(description="model-server slot seconds of all the task's attempts (a pipeline: of its stage tasks)")
    by_workflow_stage: Optional[dict[str, float]] = Field(None, description="a pipeline's compute seconds by stage")


class Task(BaseModel):
    task_id: str
    workflow: str
    status: Status
    input: dict[str, Any]
    output: Any = None
    error: Optional[dict[str, Any]] = None
    progress: dict[str, Any]
    priority: int
    attempts: int
    max_attempts: int
    timeout_s: float
    webhook_url: Optional[str]
    metadata: dict[str, Any]
    consumer_id: Optional[str]
    cancel_requested: bool
    created_at: str
    updated_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    # A pipeline's stage task: its pipeline, stage and item position (null for other tasks).
    parent_id: Optional[str] = None
    stage: Optional[str] = None
    index: Optional[int] = None
    # The producer whose token created it (a stage task: its pipeline's); CONTRACT §9.
    producer: str = "default"
    # Issue 18: when a PENDING task expires (null: never), the task a rerun copied, compute used.
    expires_at: Optional[str] = None
    rerun_of: Optional[str] = None
    usage: Optional[Usage] = None


class StageView(BaseModel):
    name: str
    status: Status
    task_ids: list[str]
    completed: int
    total: int


class TaskWithHistory(Task):
    history: list[Attempt]
    stages: Optional[list[StageView]] = Field(None, description="a pipeline's stages, in definition order")


class TaskBatch(BaseModel):
    tasks: list[Task]


class TaskPage(BaseModel):
    items: list[Task]
    next_cursor: Optional[str]


class Lease(BaseModel):
    id: str
    expires_at: str


class LeasedTask(Task):
    lease: Lease


class FetchResponse(BaseModel):
    tasks: list[LeasedTask]


class LeaseRequest(Strict):
    lease_id: Text = Field(min_length=1, max_length=100)


class HeartbeatRequest(LeaseRequest):
    progress: Optional[Progress] = None


class HeartbeatResponse(BaseModel):
    lease_expires_at: str
    cancel_requested: bool


class CompleteRequest(LeaseRequest):
    output: Any = None
    compute_s: float = Field(0.0, ge=0, le=MAX_COMPUTE_S, description="model-server slot seconds this attempt used")


class CompleteItem(CompleteRequest):
    task_id: Text = Field(min_length=1, max_length=100)


class NextFetch(Strict):
    """A fetch made once the completions are committed, answered in the same response: the
    consumer's next tasks, without a request of their own. Same bounds as the fetch route."""

    workflow: list[Text] = Field(default_factory=list, max_length=50)
    consumer_id: Text = Field("anonymous", min_length=1, max_length=200)
    host: Optional[Text] = Field(None, max_length=255)
    limit: int = Field(1, ge=1, le=100)
    wait_s: float = Field(0.0, ge=0)  # capped by TASKFLEET_MAX_WAIT_S in the route
    wake_on_finish: bool = Field(False, description="end the wait early when one of this consumer's leases ends")


class CompleteMany(Strict):
    items: list[CompleteItem] = Field(min_length=1, max_length=500)
    fetch: Optional[NextFetch] = None


class ItemResult(BaseModel):
    task_id: str
    status: Optional[Status] = None
    error: Optional[ErrorInfo] = None


class CompleteManyResponse(BaseModel):
    results: list[ItemResult]
    tasks: Optional[list[LeasedTask]] = Field(None, description="with ``fetch``: the tasks it leased (maybe none)")


class FailRequest(LeaseRequest):
    error: ErrorInfo
    retryable: bool
    retry_after_s: Optional[float] = Field(None, ge=0, le=86400)
    compute_s: float = Field(0.0, ge=0, le=MAX_COMPUTE_S, description="model-server slot seconds this attempt used")


class StatusResponse(BaseModel):
    task_id: str
    status: Status
    attempts: int
    error: Optional[dict[str, Any]] = None


class Accepted(BaseModel):
    task_id: str
    status: Status


class FileUploaded(BaseModel):
    url: str


class ErrorBody(BaseModel):
    error: ErrorInfo


class ModelServerReport(Strict):
    url: Text = Field(min_length=1, max_length=2048)
    workflow: Text = Field(max_length=100, description="the model-server kind (face_swap, flux, tts, ...)")
    status: Text = Field(max_length=100)
    circuit: Optional[Text] = Field(None, max_length=20)
    in_flight: int = Field(0, ge=0)
    capacity: int = Field(1, ge=0)


class ConsumerReport(Strict):
    consumer_id: Text = Field(min_length=1, max_length=200)
    host: Optional[Text] = Field(None, max_length=255)
    workflows: list[Text] = Field(default_factory=list, max_length=100)
    concurrency: int = Field(ge=0)
    in_flight: int = Field(ge=0)
    model_servers: list[ModelServerReport] = Field(default_factory=list, max_length=200)


class ReportAccepted(BaseModel):
    report_every_s: float


class ConsumerView(ConsumerReport):
    model_config = ConfigDict(extra="ignore")
    started_at: str
    last_seen: str


class ConsumerList(BaseModel):
    consumers: list[ConsumerView]


class Percentiles(BaseModel):
    p50: Optional[float]
    p95: Optional[float]


class WorkflowStats(BaseModel):
    workflow: str
    pending: int
    processing: int
    completed_5m: int
    failed_5m: int
    completed_1h: int
    failed_1h: int
    completed_per_min_5m: float
    completed_per_min_1h: float
    wait_s: Percentiles
    run_s: Percentiles
    oldest_pending_age_s: float


class UsageGroup(BaseModel):
    key: str = Field(description="the producer or workflow name")
    compute_s: float
    attempts: int
    tasks: int


class UsageResponse(BaseModel):
    group_by: Literal["producer", "workflow"]
    since: str
    until: str
    total_compute_s: float
    groups: list[UsageGroup]


class StatsResponse(BaseModel):
    workflows: list[WorkflowStats]
    generated_at: str


def parse_body(model: type[M], raw: bytes) -> M:
    """A JSON body as ``model``, with the errors FastAPI would give: a request validation
    error whose locations start at ``body``; the text itself is refused as parse_json does."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return model.model_validate(parse_json(raw))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None


@functools.lru_cache(maxsize=4096)
def iso(ts: float | None) -> str | None:
    # Cached: a task's timestamps repeat (created_at = updated_at at first; a claim or a batch
    # shares one "now"), and formatting was ~3% of the API's CPU under load.
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the contract's task object."""
    return {
        "task_id": row["id"],
        "workflow": row["workflow"],
        "status": row["status"],
        "input": json.loads(row["input"]),
        "output": json.loads(row["output"]) if row["output"] is not None else None,
        "error": json.loads(row["error"]) if row["error"] is not None else None,
        "progress": json.loads(row["progress"]),
        "priority": row["priority"],
        "attempts": row["attempts"],
        "max_attempts": row["max_attempts"],
        "timeout_s": row["timeout_s"],
        "webhook_url": row["webhook_url"],
        "metadata": json.loads(row["metadata"]),
        "consumer_id": row["consumer_id"],
        "cancel_requested": bool(row["cancel_requested"]),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "parent_id": row["parent_id"],
        "stage": row["stage"],
        "index": row["item_index"],
        "producer": row["producer"],
        "expires_at": iso(row["expires_at"]),
        "rerun_of": row["rerun_of"],
        "usage": _usage(row),
    }


def _usage(row: dict[str, Any]) -> dict[str, Any]:
    usage: dict[str, Any] = {"compute_s": round(row["compute_s"] or 0.0, 6)}
    if row["usage_by_stage"] is not None:
        usage["by_workflow_stage"] = json.loads(row["usage_by_stage"])
    return usage


def attempt_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "lease_id": row["lease_id"],
        "consumer_id": row["consumer_id"],
        "host": row["host"],
        "started_at": iso(row["started_at"]),
        "ended_at": iso(row["ended_at"]),
        "outcome": row["outcome"],
        "error": json.loads(row["error"]) if row["error"] else None,
    }
