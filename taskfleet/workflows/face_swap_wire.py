"""The ``face_swap`` workflow's wire format between the consumer and the face-swap server, both directions, streamed.

Request: ``POST /process`` as ``multipart/form-data`` with files ``source`` and ``target`` and a
field ``options`` (``FaceSwapOptions`` as JSON). Response ``200``: ``multipart/mixed``, written
while the job runs: ``progress`` parts (JSON ``{"percent", "message"}``) every N frames, then either
one ``error`` part (JSON error body + ``retryable``) or one ``result`` part (``SwapResult``) followed
by one ``file`` part per output. Errors found before any progress (bad input, no source face) come
as a plain HTTP error instead. Nothing is held whole in memory on either side: parts are parsed by
python-multipart's push parser as chunks arrive and file parts go straight to disk.

Both sides import it from here, beside the workflow, so the consumer never imports the server's
package; it needs only pydantic and python-multipart (no ONNX/OpenCV).
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

from pydantic import BaseModel
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

JSON_PART_LIMIT = 1 << 20


class OutputFile(BaseModel):
    name: str  # "output.mp4", "preview.gif"
    format: str
    content_type: str
    size: int
    role: Literal["main", "preview", "extra"]


class SwapResult(BaseModel):
    outputs: list[OutputFile]
    metadata: dict[str, Any]
    processing_time: float
    # Seconds the job held a device slot: the streamed answer's headers go out before the job
    # ends, so the figure comes here instead of in X-Compute-Seconds (model_servers/compute.py).
    compute_s: float = 0.0


def new_boundary() -> str:
    return "tfswap" + secrets.token_hex(16)


def part_head(boundary: str, name: str, content_type: str, *, filename: str | None = None, length: int | None = None) -> bytes:
    disposition = f'inline; name="{name}"' if filename is None else f'attachment; name="{name}"; filename="{filename}"'
    lines = [f"--{boundary}", f"Content-Type: {content_type}", f"Content-Disposition: {disposition}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_part(boundary: str, name: str, value: Any) -> bytes:
    return part_head(boundary, name, "application/json") + json.dumps(value).encode() + b"\r\n"


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def safe_filename(name: str) -> str | None:
    """A part's filename if it is a plain name (no path, no dots first), else None."""
    return name if _SAFE_NAME.match(name) else None


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class PartTooLarge(Exception):
    def __init__(self, name: str, limit: int) -> None:
        super().__init__(f"part {name!r} is over {limit} bytes")
        self.name, self.limit = name, limit


class MemorySink:
    def __init__(self, name: str, limit: int = JSON_PART_LIMIT) -> None:
        self.name, self.limit = name, limit
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise PartTooLarge(self.name, self.limit)
        self.chunks.append(data)

    def close(self) -> None:
        pass

    def value(self) -> bytes:
        return b"".join(self.chunks)


class FileSink:
    def __init__(self, name: str, path: Path, limit: int) -> None:
        self.name, self.path, self.limit = name, path, limit
        self.size = 0
        self._fh = open(path, "wb")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self._fh.close()
            raise PartTooLarge(self.name, self.limit)
        self._fh.write(data)

    def close(self) -> None:
        self._fh.close()


class Part:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        disposition = parse_options_header(headers.get("content-disposition", ""))[1]
        self.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        self.filename = filename.decode("utf-8", "replace") if filename is not None else None
        self.content_type = headers.get("content-type", "")


class MultipartReader:
    """Feed body chunks in; ``open_part(part)`` decides where each part's bytes go.

    ``on_done(part, sink)`` runs when a part ends. Both run inside ``feed``; exceptions they raise
    (a size cap, a bad name) come out of ``feed``.
    """

    def __init__(self, content_type: str, open_part: Callable[[Part], Sink], on_done: Callable[[Part, Sink], None]) -> None:
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not kind.startswith(b"multipart/") or not boundary:
            raise ValueError("not a multipart body")
        self._open_part, self._on_done = open_part, on_done
        self._field = b""
        self._value = b""
        self._headers: dict[str, str] = {}
        self._part: Part | None = None
        self._sink: Sink | None = None
        self.finished = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._end,
                "on_end": self._finish,
            },
        )

    def feed(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def _begin(self) -> None:
        self._headers = {}
        self._field = self._value = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        self._part = Part(self._headers)
        self._sink = self._open_part(self._part)

    def _data(self, data: bytes, start: int, end: int) -> None:
        assert self._sink is not None
        self._sink.write(data[start:end])

    def _end(self) -> None:
        assert self._part is not None and self._sink is not None
        sink, self._sink = self._sink, None
        sink.close()
        self._on_done(self._part, sink)

    def _finish(self) -> None:
        self.finished = True
