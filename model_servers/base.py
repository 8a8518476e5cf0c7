"""What every model server shares: /health and /ready, the GPU slot limit, settings, error bodies.

A server whose models are missing still starts, reports ``unhealthy`` with the reason, and
answers its work routes and ``/ready`` 503, so an orchestrator can see why instead of watching a
crash loop. Every error, the framework's 404/405/422 included, has the API's ``{"error": ...}`` shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from typing import AsyncIterator, Callable, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_servers.compute import ComputeHeaderMiddleware, meter
from model_servers.metrics import install_metrics
from taskfleet.errors import TaskfleetError, Unavailable, error_body
from taskfleet.logs import RequestLogMiddleware

# The framework's own refusals, under the codes the task API uses for the same statuses.
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ModelServerSettings(BaseSettings):
    """Settings every model server reads; each server subclasses it with its own fields."""

    model_config = SettingsConfigDict(env_prefix="TASKFLEET_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8100
    models_dir: str = "./models"
    gpu_slots: int = 1
    # ONNX Runtime / torch device preference, first available wins.
    providers: str = "CUDAExecutionProvider,CPUExecutionProvider"
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Health(BaseModel):
    status: Literal["healthy", "loading", "unhealthy"]
    message: str = ""
    model_loaded: bool = False
    models_directory: str = ""
    device: str = "cpu"
    in_flight: int = 0
    capacity: int = 1


class GpuSlots:
    """Requests queue here for the device instead of oversubscribing it. The seconds a request
    holds a slot go on its compute meter (model_servers/compute.py)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._sem = asyncio.Semaphore(self.capacity)
        self.in_flight = 0  # holding a slot
        self.waiting = 0  # queued for one
        self.on_wait: Callable[[float], None] | None = None  # given each request's wait, in seconds
        self.on_held: Callable[[float], None] | None = None  # given each slot's held seconds

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        request = meter()
        if request is not None:
            request.open += 1
        try:
            self.waiting += 1
            queued = time.perf_counter()
            try:
                await self._sem.acquire()
            finally:
                self.waiting -= 1
            held = time.perf_counter()
            if self.on_wait is not None:
                self.on_wait(held - queued)
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1
                self._sem.release()
                held_s = time.perf_counter() - held
                if request is not None:
                    request.seconds += held_s
                if self.on_held is not None:
                    self.on_held(held_s)
        finally:
            if request is not None:
                request.open -= 1


class OutOfMemory(TaskfleetError):
    """The device (or the host) ran out of memory on this request.

    Not an outage: a 503 would release the task without counting the attempt, and a request that
    always runs out of memory would then loop forever. A 500 counts the attempt and stays
    retryable (the memory may be free next time), so the task's ``max_attempts`` bounds it.
    """

    code, status, retryable = "out_of_memory", 500, True


# What ONNX Runtime says when an allocation fails: its CPU/CUDA arenas, cudaMalloc, cuBLAS/cuDNN
# workspaces. ORT raises one class per status code (Fail, RuntimeException...), so only the message
# tells an allocation failure from any other.
_ORT_OOM = re.compile(
    r"Failed to allocate memory|out of memory|bad_alloc|ALLOC_FAILED|cudaErrorMemoryAllocation", re.IGNORECASE
)
# torch's CPU allocator raises a plain RuntimeError (only device allocators raise OutOfMemoryError).
_TORCH_CPU_OOM = re.compile(r"DefaultCPUAllocator: (can't allocate memory|not enough memory)")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure of Python, torch or ONNX Runtime.

    The libraries are looked up in ``sys.modules`` rather than imported: an exception can only
    come from a library that is loaded, and the face-swap server must not pull in torch.
    """
    if isinstance(exc, MemoryError):  # numpy's _ArrayMemoryError included
        return True
    torch = sys.modules.get("torch")
    if torch is not None:
        oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
        if isinstance(exc, oom):
            return True
        if isinstance(exc, RuntimeError) and _TORCH_CPU_OOM.search(str(exc)):
            return True
    if type(exc).__module__.startswith("onnxruntime") and _ORT_OOM.search(str(exc)):
        return True
    return False


def out_of_memory(exc: BaseException, what: str) -> OutOfMemory:
    """The error a server answers for an allocation failure during ``what``, keeping the library's words."""
    detail = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
    return OutOfMemory(f"out of memory during {what}: {detail}")


class ModelState:
    """Load status shared by a server's routes; ``require_ready`` guards every work route."""

    def __init__(self, models_directory: str, capacity: int) -> None:
        self.status: Literal["healthy", "loading", "unhealthy"] = "loading"
        self.message = "loading models"
        self.device = "cpu"
        self.models_directory = models_directory
        self.slots = GpuSlots(capacity)

    def ready(self, device: str, message: str = "ready") -> None:
        self.status, self.device, self.message = "healthy", device, message

    def failed(self, reason: str) -> None:
        self.status, self.message = "unhealthy", reason

    def require_ready(self) -> None:
        if self.status != "healthy":
            raise Unavailable(self.message, code="model_unavailable")

    def health(self) -> Health:
        return Health(
            status=self.status,
            message=self.message,
            model_loaded=self.status == "healthy",
            models_directory=self.models_directory,
            device=self.device,
            in_flight=self.slots.in_flight + self.slots.waiting,
            capacity=self.slots.capacity,
        )


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


def install_common(app: FastAPI, state: ModelState) -> None:
    """Add /health, /ready, /metrics, request logging and the contract's error shape to a model server app."""
    install_metrics(app, state.slots)
    app.add_middleware(ComputeHeaderMiddleware)
    # Added last, so outermost: its request id is in context while the rest runs.
    app.add_middleware(RequestLogMiddleware, logger="model_servers.http")

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return state.health()

    @app.get("/ready", response_model=Ready, responses={503: {"description": "loading, or cannot load its models"}})
    async def ready() -> Ready:
        # For readiness probes: 200 only when the work routes would take a request. A server that
        # got SIGTERM needs no flag here: uvicorn closes its socket first, so the probe is refused.
        state.require_ready()
        return Ready()

    @app.exception_handler(TaskfleetError)
    async def _taskfleet_error(_: Request, exc: TaskfleetError) -> JSONResponse:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        body = TaskfleetError(
            "request does not match the schema",
            code="validation_error",
            details=exc.errors(),
        ).to_body()
        return JSONResponse(jsonable(body), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A route let a library error through (the server logs its traceback after this answer);
        # an allocation failure still gets its own code.
        if is_out_of_memory(exc):
            error = out_of_memory(exc, "the request")
            return JSONResponse(error.to_body(), status_code=error.status)
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)


def serve(app: FastAPI, settings: ModelServerSettings, host: str, port: int) -> None:
    """Run a model server app with uvicorn, its lines in the fleet's one log format (set up by
    the caller with ``setup_logging`` before the app is made); requests are logged at debug by
    the app's own middleware, not by uvicorn's access log."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), log_config=None, access_log=False)


def jsonable(value):  # pydantic error details may hold exceptions or bytes
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(value, custom_encoder={Exception: str, bytes: lambda b: b.decode("utf-8", "replace")})
