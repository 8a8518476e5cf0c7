"""Routes of the face-swap model server: ``POST /process`` and the shared ``GET /health``.

Models load once, in a thread, when the app starts; until then (or forever, when files are
missing) ``/health`` says why and ``/process`` answers 503. Each job runs in a worker thread under
a GPU slot, so concurrent requests queue for the device instead of oversubscribing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from typing import AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from model_servers.base import ModelState, install_common, is_out_of_memory, jsonable, out_of_memory
from model_servers.compute import ComputeMeter, meter
from model_servers.face_swap.engine import Engine
from model_servers.face_swap.engine_factory import build_engine
from model_servers.face_swap.media import Tools, find_tools
from model_servers.face_swap.pipeline import Job, JobResult
from model_servers.face_swap.settings import FaceSwapSettings
from taskfleet.errors import BadRequest, EngineUnavailable, InputTooLarge, InvalidInput, TaskfleetError
from taskfleet.scratch import Scratch
from taskfleet.workflows.face_swap import FaceSwapOptions
from taskfleet.workflows.face_swap_wire import (
    FileSink,
    MemorySink,
    MultipartReader,
    Part,
    PartTooLarge,
    SwapResult,
    closing,
    json_part,
    new_boundary,
    part_head,
)

log = logging.getLogger("model_servers.face_swap")

KEEPALIVE_S = 10.0  # a progress part at least this often, so a client's read timeout never fires
FILE_CHUNK = 1 << 20


def create_app(settings: FaceSwapSettings | None = None, *, engine: Engine | None = None) -> FastAPI:
    settings = settings or FaceSwapSettings()
    engine = engine or build_engine(settings)
    state = ModelState(str(settings.models_path()), settings.gpu_slots)
    holder: dict[str, Tools] = {}

    async def load() -> None:
        try:
            holder["tools"] = find_tools(settings.ffmpeg)
            message = await asyncio.to_thread(engine.load)
            state.ready(engine.device, message)
            log.info("face swap ready: %s", message)
        except (EngineUnavailable, TaskfleetError) as exc:
            state.failed(str(exc))
            log.error("face swap unavailable: %s", exc)
        except Exception as exc:  # a broken model file: say so on /health rather than crash-loop
            state.failed(f"loading failed: {type(exc).__name__}: {exc}")
            log.exception("face swap model load failed")

    scratch = Scratch(settings.work_dir, "faceswap")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scratch.open()  # also removes job folders left by a face swap server that was killed
        # Serve /health ("loading") while the models load, so orchestrators see progress, not silence.
        loader = asyncio.create_task(load())
        yield
        loader.cancel()
        scratch.close()

    app = FastAPI(title="taskfleet face swap", lifespan=lifespan)
    app.state.model_state = state
    app.state.engine = engine
    install_common(app, state)

    @app.post("/process")
    async def process(request: Request) -> StreamingResponse:
        state.require_ready()
        cap = settings.max_input_mb << 20
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > 2 * cap + (1 << 20):
            raise InputTooLarge(f"request body is {int(declared) >> 20} MB; each file may be {settings.max_input_mb} MB")
        workdir = scratch.mkdtemp("job-")
        try:
            files, options = await receive(request, workdir, cap)
            job = Job(
                engine=engine,
                tools=holder["tools"],
                settings=settings,
                source=files["source"],
                target=files["target"],
                options=options,
                workdir=workdir,
            )
            run = JobRun(job, state)
            return await run.respond()
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
            raise

    return app


async def receive(request: Request, workdir: Path, cap: int) -> tuple[dict[str, Path], FaceSwapOptions]:
    """Stream the multipart upload to files in ``workdir``, stopping at ``cap`` bytes per file."""
    files: dict[str, Path] = {}
    fields: dict[str, bytes] = {}

    def open_part(part: Part):
        if part.filename is not None:
            if part.name not in ("source", "target") or part.name in files:
                raise BadRequest(f"unexpected file part {part.name!r}; send 'source' and 'target'")
            return FileSink(part.name, workdir / f"{part.name}.upload", cap)
        if part.name != "options":
            raise BadRequest(f"unexpected field {part.name!r}")
        return MemorySink(part.name, 64 << 10)

    def done(part: Part, sink) -> None:
        if isinstance(sink, FileSink):
            files[part.name] = sink.path
        else:
            fields[part.name] = sink.value()

    try:
        reader = MultipartReader(request.headers.get("content-type", ""), open_part, done)
    except ValueError:
        raise BadRequest("send multipart/form-data with files 'source' and 'target'") from None
    try:
        async for chunk in request.stream():
            # Parsing writes to disk; small chunks make that cheap enough to stay on the loop.
            reader.feed(chunk)
    except PartTooLarge as exc:
        raise InputTooLarge(f"{exc.name} is over {cap >> 20} MB") from None
    finally:
        reader.close()
    if not reader.finished:
        raise BadRequest("the multipart body ended early")
    missing = [n for n in ("source", "target") if n not in files]
    if missing:
        raise InvalidInput(f"missing file part(s): {', '.join(missing)}", code="missing_file")
    try:
        options = FaceSwapOptions.model_validate_json(fields.get("options") or b"{}")
    except ValidationError as exc:
        raise InvalidInput(
            "options do not match FaceSwapOptions", code="invalid_options", details=jsonable(exc.errors(include_url=False))
        ) from None
    return files, options


class JobRun:
    """Runs a job in a thread under a GPU slot and turns its events into the streamed response."""

    def __init__(self, job: Job, state: ModelState) -> None:
        self.job = job
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        job.report = self._report
        self.task: asyncio.Task | None = None
        self.last_progress = {"percent": 0.0, "message": "working"}
        self.meter = meter() or ComputeMeter()  # this request's slot seconds

    def _report(self, percent: float, message: str) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("progress", {"percent": round(percent, 1), "message": message}))

    async def _run(self) -> None:
        try:
            async with self.state.slots.slot():
                worker = self.loop.run_in_executor(None, self.job.run)
                try:
                    result = await asyncio.shield(worker)
                except asyncio.CancelledError:
                    # Hold the slot until the thread has really stopped, or the device is oversubscribed.
                    self.job.cancel.set()
                    with contextlib.suppress(BaseException):
                        await worker
                    raise
            self.events.put_nowait(("result", result))
        except asyncio.CancelledError:
            raise
        except TaskfleetError as exc:
            self.events.put_nowait(("error", exc))
        except Exception as exc:
            if is_out_of_memory(exc):  # ONNX Runtime's arena (CPU or GPU), or numpy
                log.warning("face swap job ran out of memory: %s", exc)
                self.events.put_nowait(("error", out_of_memory(exc, "the face swap")))
                return
            # A library failure we did not foresee: report it, keep serving.
            log.exception("face swap job failed")
            self.events.put_nowait(("error", TaskfleetError(f"face swap failed: {exc}", code="face_swap_failed", retryable=True)))

    async def respond(self) -> StreamingResponse:
        self.task = asyncio.create_task(self._run())
        try:
            first = await asyncio.wait_for(self.events.get(), KEEPALIVE_S)
        except asyncio.TimeoutError:
            first = ("progress", {"percent": 0.0, "message": "queued" if self.state.slots.waiting else "working"})
        except BaseException:  # the request itself was cancelled: stop the job before its files go
            await self._stop()
            raise
        if first[0] == "error":
            raise first[1]  # nothing sent yet: a plain HTTP error with the code (and X-Compute-Seconds)
        # The headers go out while the job may still hold its slot: the result or error part
        # carries the slot seconds instead.
        self.meter.in_body = True
        boundary = new_boundary()
        return StreamingResponse(self._body(boundary, first), media_type=f"multipart/mixed; boundary={boundary}")

    async def _body(self, boundary: str, first) -> AsyncIterator[bytes]:
        try:
            event = first
            while True:
                kind, value = event
                if kind == "progress":
                    self.last_progress = value
                    yield json_part(boundary, "progress", value)
                elif kind == "error":
                    yield json_part(boundary, "error", {
                        **value.to_body(), "retryable": value.retryable, "status": value.status,
                        "compute_s": round(self.meter.seconds, 6),
                    })  # fmt: skip
                    break
                else:
                    async for piece in self._result_parts(boundary, value):
                        yield piece
                    break
                try:
                    event = await asyncio.wait_for(self.events.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    event = ("progress", self.last_progress)
            yield closing(boundary)
        finally:
            await self._cleanup()

    async def _result_parts(self, boundary: str, result: JobResult) -> AsyncIterator[bytes]:
        summary = SwapResult(
            outputs=[o for o, _ in result.outputs], metadata=result.metadata, processing_time=result.processing_time,
            compute_s=round(self.meter.seconds, 6),
        )
        yield json_part(boundary, "result", summary.model_dump(mode="json"))
        for out, path in result.outputs:
            yield part_head(boundary, "file", out.content_type, filename=out.name, length=out.size)
            async with await anyio.open_file(path, "rb") as fh:
                while chunk := await fh.read(FILE_CHUNK):
                    yield chunk
            yield b"\r\n"

    async def _stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    async def _cleanup(self) -> None:
        await self._stop()
        await asyncio.to_thread(shutil.rmtree, self.job.workdir, True)
