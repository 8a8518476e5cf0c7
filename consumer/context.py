"""What a processor sees of its task: input, a private work directory, storage, inputs, model servers.

A processor is ``async def process(ctx: TaskContext) -> dict``; the dict it returns is the task's
output. Everything that touches the outside world goes through here so that the runtime can keep
its promises: downloads are SSRF-guarded and size-capped, outputs land under the task's own key
before the task completes, model-server outages release the task instead of failing it.
"""

from __future__ import annotations

import logging
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from consumer.errors import NoModelServer, TaskCancelled

if TYPE_CHECKING:
    from consumer.inputs import InputFetcher
    from consumer.model_client import ComputeUsage, ModelServerPool
    from storage import StoredObject


@dataclass
class Progress:
    percent: float = 0.0
    message: str = ""


@dataclass(eq=False)
class TaskContext:
    task_id: str
    workflow: str
    input: dict[str, Any]
    attempt: int
    workdir: Path = field(repr=False)  # a property (below): the directory is made on first use
    storage: Any  # storage.Storage: put_file, url_for, output_key, ...
    timeout_s: float
    metadata: dict[str, Any] = field(default_factory=dict)
    model_server_kind: str | None = None
    _fetcher: "InputFetcher | None" = None
    _pools: dict[str, "ModelServerPool"] = field(default_factory=dict)
    _progress: Progress = field(default_factory=Progress)
    _cancel_requested: Callable[[], bool] = lambda: False
    _on_progress: Callable[[], Awaitable[None]] | None = None
    _usage: "ComputeUsage | None" = None
    log: logging.LoggerAdapter = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"consumer.processors.{self.workflow}"),
            {"task_id": self.task_id, "workflow": self.workflow},
        )

    async def progress(self, percent: float, message: str = "") -> None:
        """Record progress; the next heartbeat carries it to the API.

        Also a cancellation point for processors that do work between awaits (threads, subprocesses):
        once the producer has asked to cancel, this raises ``TaskCancelled``.
        """
        self._progress.percent = max(0.0, min(100.0, float(percent)))
        self._progress.message = message
        if self._cancel_requested():
            raise TaskCancelled("cancel requested")
        if self._on_progress is not None:
            await self._on_progress()

    def report_compute_s(self, seconds: object) -> None:
        """Add model-server slot seconds that a server reported in its response body (a streamed
        answer, whose headers went out before its slot was given back); ``X-Compute-Seconds``
        headers are counted by the model-server client itself."""
        if self._usage is not None:
            self._usage.add(seconds)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested()

    async def fetch_input(self, url: str, name: str) -> Path:
        """Stream ``url`` into ``workdir/name`` (SSRF-guarded, size-capped) and return the path.

        http(s) goes through the URL guard; ``s3://``, ``gs://`` and ``file://`` (inside the storage
        root only) through the storage package.
        """
        if self._fetcher is None:
            raise RuntimeError("this TaskContext was built without an input fetcher")
        dest = self._safe_path(name)
        await self._fetcher.fetch(url, dest, storage=self.storage)
        return dest

    def output_key(self, name: str) -> str:
        return self.storage.output_key(self.workflow, self.task_id, name)

    async def put_output(self, path: Path | str, name: str, content_type: str | None = None) -> "StoredObject":
        """Upload a file as output ``name``; a retried attempt overwrites the same key."""
        return await self.storage.put_file(self.output_key(name), Path(path), content_type=_content_type(name, content_type))

    async def put_outputs(self, files: "Sequence[tuple[Path | str | bytes, str, str | None]]") -> "list[StoredObject]":
        """Upload several outputs in one go, each (a file's path or the bytes themselves, name,
        content type or None): remote storage sends them side by side, local storage syncs them
        to disk together. Bytes go straight to storage, with no file in the work directory."""
        return await self.storage.put_files(
            [
                (self.output_key(name), source if isinstance(source, bytes) else Path(source), _content_type(name, content_type))
                for source, name, content_type in files
            ]
        )

    async def put_output_bytes(self, data: bytes, name: str, content_type: str | None = None) -> "StoredObject":
        return await self.storage.put_bytes(self.output_key(name), data, content_type=_content_type(name, content_type))

    @property
    def model_server(self) -> "ModelServerPool":
        """The client for this workflow's model-server kind (health-aware, retrying)."""
        if self.model_server_kind is None:
            raise NoModelServer(f"workflow {self.workflow!r} declares no model server")
        return self.model_server_for(self.model_server_kind)

    def model_server_for(self, kind: str) -> "ModelServerPool":
        """The client for another kind, for workflows that chain servers (text_to_video: tts + flux)."""
        try:
            return self._pools[kind]
        except KeyError:
            raise NoModelServer(f"no {kind!r} model server URLs are configured on this consumer") from None

    def _safe_path(self, name: str) -> Path:
        # Names come from processors, but a stray "../" must never write outside the work directory.
        path = (self.workdir / name).resolve()
        if self.workdir.resolve() not in path.parents:
            raise ValueError(f"input name {name!r} escapes the work directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def _content_type(name: str, given: str | None) -> str:
    return given or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _get_workdir(self: TaskContext) -> Path:
    # Made on first use: a task that never touches it (echo, a JSON-only call) skips a mkdir and an
    # rmdir, which cost ~1.5 ms of a ~3.5 ms per-task budget on a busy overlay filesystem.
    path = self.__dict__["_workdir"]
    if not self.__dict__["_workdir_made"]:
        path.mkdir(parents=True, exist_ok=True)
        self.__dict__["_workdir_made"] = True
    return path


def _set_workdir(self: TaskContext, value: Path | str) -> None:
    self.__dict__["_workdir"] = Path(value)
    self.__dict__["_workdir_made"] = False


TaskContext.workdir = property(_get_workdir, _set_workdir)  # type: ignore[assignment]


def workdir_made(ctx: TaskContext) -> bool:
    """Whether the task's work directory was made (something asked for ``ctx.workdir``)."""
    return bool(ctx.__dict__.get("_workdir_made"))
