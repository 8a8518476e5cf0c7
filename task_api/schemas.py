"""Request and response models of the task API's HTTP boundary."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from task_api.body import parse_json

Status = Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]
MAX_PRIORITY = 1000
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


class TaskWithHistory(Task):
    history: list[Attempt]


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


class CompleteItem(CompleteRequest):
    task_id: Text = Field(min_length=1, max_length=100)


class CompleteMany(Strict):
    items: list[CompleteItem] = Field(min_length=1, max_length=500)


class ItemResult(BaseModel):
    task_id: str
    status: Optional[Status] = None
    error: Optional[ErrorInfo] = None


class CompleteManyResponse(BaseModel):
    results: list[ItemResult]


class FailRequest(LeaseRequest):
    error: ErrorInfo
    retryable: bool
    retry_after_s: Optional[float] = Field(None, ge=0, le=86400)


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
