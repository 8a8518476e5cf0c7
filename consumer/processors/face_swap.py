"""The ``face_swap`` processor: fetch both inputs, stream them to a face-swap server, store the outputs.

The server answers a streamed ``multipart/mixed`` body (taskfleet/workflows/face_swap_wire.py):
progress parts become task progress, file parts go straight to the work directory, and each
output is then uploaded to storage. Nothing is held whole in memory, so a 2 GB video is fine.
No ONNX or OpenCV is imported here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from consumer.context import TaskContext
from consumer.errors import ModelServerError
from taskfleet.errors import TaskfleetError
from taskfleet.workflows.face_swap import FaceSwapInput, FaceSwapResponse
from taskfleet.workflows.face_swap_wire import (
    FileSink,
    MemorySink,
    MultipartReader,
    OutputFile,
    Part,
    SwapResult,
    safe_filename,
)

# Share of the task's progress bar: fetching inputs, the server's work, uploading outputs.
FETCHED, SERVER_SPAN, UPLOADING = 5.0, 85.0, 92.0
MAX_OUTPUT_BYTES = 16 << 30


class _ResultStream:
    """Collects what the server streams back: progress events, the result, the error, the files."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.events: list[tuple[str, Any]] = []
        self.result: SwapResult | None = None
        self.files: dict[str, Path] = {}

    def open_part(self, part: Part):
        if part.name == "file":
            name = safe_filename(part.filename or "")
            if name is None:
                raise ModelServerError(f"the server sent an unsafe file name {part.filename!r}", retryable=True)
            return FileSink(name, self.outdir / name, MAX_OUTPUT_BYTES)
        return MemorySink(part.name)

    def done(self, part: Part, sink) -> None:
        if isinstance(sink, FileSink):
            self.files[sink.name] = sink.path
            return
        try:
            value = json.loads(sink.value())
        except ValueError:
            raise ModelServerError(f"the server sent a {part.name!r} part that is not JSON", retryable=True) from None
        self.events.append((part.name, value))


async def process(ctx: TaskContext) -> dict[str, Any]:
    started = time.perf_counter()
    inp = FaceSwapInput.model_validate(ctx.input)
    source = await ctx.fetch_input(inp.source_url, "inputs/source")
    target = await ctx.fetch_input(inp.target_url, "inputs/target")
    await ctx.progress(FETCHED, "inputs fetched")

    outdir = ctx.workdir / "outputs"
    outdir.mkdir(parents=True, exist_ok=True)
    stream = _ResultStream(outdir)
    with open(source, "rb") as src_fh, open(target, "rb") as tgt_fh:
        files = {
            "source": ("source", src_fh, "application/octet-stream"),
            "target": ("target", tgt_fh, "application/octet-stream"),
        }
        data = {"options": inp.options().model_dump_json()}
        async with ctx.model_server.stream("POST", "/process", files=files, data=data) as response:
            try:
                reader = MultipartReader(response.headers.get("content-type", ""), stream.open_part, stream.done)
            except ValueError:
                raise ModelServerError("the face swap server did not answer multipart/mixed", retryable=True) from None
            try:
                async for chunk in response.aiter_bytes():
                    reader.feed(chunk)
                    await _drain(ctx, stream)
            finally:
                reader.close()
            if not reader.finished:
                raise ModelServerError("the face swap response ended early", retryable=True)
    result = stream.result
    if result is None:
        raise ModelServerError("the face swap server sent no result", retryable=True)
    _check_files(result.outputs, stream.files)

    await ctx.progress(UPLOADING, "storing outputs")
    objects = await ctx.put_outputs([(stream.files[out.name], out.name, out.content_type) for out in result.outputs])
    stored = {out.name: (out, obj) for out, obj in zip(result.outputs, objects)}
    main_out, main = next(v for v in stored.values() if v[0].role == "main")
    metadata: dict[str, Any] = {
        **result.metadata,
        "storage_url": main.storage_url,
        "storage_provider": getattr(ctx.storage, "provider", None),
        "outputs": {out.format: obj.url for out, obj in stored.values()},
        "total_time": round(time.perf_counter() - started, 3),
    }
    for out, obj in stored.values():
        if out.format in ("gif", "webp") and out is not main_out:
            metadata[f"{out.format}_url"] = obj.url
    await ctx.progress(100.0, "done")
    return FaceSwapResponse(
        status="success",
        output_path=main.url,
        processing_time=result.processing_time,
        job_id=ctx.task_id,
        metadata=metadata,
    ).model_dump(mode="json")


async def _drain(ctx: TaskContext, stream: _ResultStream) -> None:
    events, stream.events = stream.events, []
    for name, value in events:
        if name == "progress":
            percent = float(value.get("percent", 0))
            await ctx.progress(FETCHED + SERVER_SPAN * max(0.0, min(100.0, percent)) / 100.0, str(value.get("message", "")))
        elif name == "error":
            ctx.report_compute_s(value.get("compute_s"))
            err = value.get("error") or {}
            raise TaskfleetError(
                str(err.get("message") or "face swap failed"),
                code=str(err.get("code") or "face_swap_failed"),
                status=422 if not value.get("retryable") else 502,
                retryable=bool(value.get("retryable")),
            )
        elif name == "result":
            try:
                stream.result = SwapResult.model_validate(value)
            except ValueError as exc:
                raise ModelServerError(f"malformed face swap result: {exc}", retryable=True) from None
            ctx.report_compute_s(stream.result.compute_s)


def _check_files(outputs: list[OutputFile], files: dict[str, Path]) -> None:
    if not any(o.role == "main" for o in outputs):
        raise ModelServerError("the face swap result names no main output", retryable=True)
    for out in outputs:
        path = files.get(out.name)
        if path is None or path.stat().st_size != out.size:
            raise ModelServerError(f"output {out.name} arrived incomplete", retryable=True)
