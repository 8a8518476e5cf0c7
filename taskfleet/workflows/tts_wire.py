"""The ``tts`` workflow's wire format: the POST /tts response, a ``multipart/form-data`` stream
written by the TTS server and read by the consumer (both import it from here).

Two parts, in this order: ``metadata`` (JSON, ``TtsMetadata``: duration, sample rate, sentence
timings, SRT text) and ``audio`` (the file, with a filename). One request returns everything, so
with several TTS servers behind one client list no second call has to find the same server again,
and the audio travels as raw bytes rather than base64 in JSON. Both sides stream: the server reads
the file in chunks, the reader writes the audio part straight to disk.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydantic import BaseModel
from python_multipart.multipart import MultipartParser, parse_options_header

from taskfleet.errors import TaskfleetError
from taskfleet.workflows.tts import AudioFormat, SentenceTiming

CHUNK = 1 << 20
MAX_METADATA_BYTES = 64 << 20  # timings and SRT of the longest text are a few hundred KB


class TtsMetadata(BaseModel):
    """The ``metadata`` part of a POST /tts response."""

    engine: str
    voice: str
    language: str
    format: AudioFormat
    content_type: str
    sample_rate: int
    duration_s: float
    size_bytes: int
    sentences: list[SentenceTiming]
    srt: str


@dataclass
class MultipartBody:
    content_type: str
    content_length: int
    chunks: AsyncIterator[bytes]


def multipart_body(metadata: TtsMetadata, audio_path: Path) -> MultipartBody:
    boundary = "tts-" + secrets.token_hex(16)
    meta = metadata.model_dump_json().encode("utf-8")
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
        f"Content-Type: application/json\r\n\r\n"
    ).encode() + meta + (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{audio_path.name}"\r\n'
        f"Content-Type: {metadata.content_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = audio_path.stat().st_size

    async def chunks() -> AsyncIterator[bytes]:
        yield head
        async with await anyio.open_file(audio_path, "rb") as f:
            while chunk := await f.read(CHUNK):
                yield chunk
        yield tail

    return MultipartBody(f"multipart/form-data; boundary={boundary}", len(head) + size + len(tail), chunks())


@dataclass
class TtsResult:
    metadata: TtsMetadata
    audio_path: Path | None  # where the audio was written; None when it is held in ``audio``
    audio: bytes | None = None


class _Reader:
    """Feeds python-multipart's streaming parser; the audio part goes to a file as it arrives,
    or, when the metadata (which comes first) declares it at most ``memory_limit`` bytes, into
    memory (spilling to the file should it run past that after all)."""

    def __init__(self, boundary: bytes, audio_path: Path | Callable[[], Path], memory_limit: int) -> None:
        self._audio_path = audio_path
        self.audio_path: Path | None = None
        self.memory_limit = memory_limit
        self.audio: bytearray | None = None
        self.metadata = bytearray()
        self.parsed_metadata: object = None  # the metadata part's JSON, where it was read early
        self.saw_audio = False
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._part: str | None = None
        self._file = None
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._part_end,
            },
        )

    def _part_begin(self) -> None:
        self._headers, self._part = {}, None

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part = options.get(b"name", b"").decode("latin-1")
        if self._part == "audio":
            self.saw_audio = True
            if self.memory_limit > 0 and 0 <= self._declared_size() <= self.memory_limit:
                self.audio = bytearray()
            else:
                self._open_file()

    def _declared_size(self) -> int:
        """The audio's ``size_bytes`` as the metadata part declares it; -1 where it does not say.
        The parsed metadata is kept, for the full check once the body has been read."""
        try:
            self.parsed_metadata = json.loads(self.metadata)
            size = self.parsed_metadata.get("size_bytes")
        except (ValueError, AttributeError):
            return -1
        return size if isinstance(size, int) and not isinstance(size, bool) else -1

    def _open_file(self) -> None:
        self.audio_path = self._audio_path() if callable(self._audio_path) else self._audio_path
        self._file = open(self.audio_path, "wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "audio":
            if self._file is None:
                self.audio.extend(data[start:end])
                if len(self.audio) > self.memory_limit:  # the metadata undercounted: spill to disk
                    self._open_file()
                    self._file.write(self.audio)
                    self.audio = None
            else:
                self._file.write(data[start:end])
        elif self._part == "metadata":
            if len(self.metadata) + end - start > MAX_METADATA_BYTES:
                raise TaskfleetError("TTS metadata part is too large", code="bad_model_response")
            self.metadata.extend(data[start:end])

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._part_end()


async def read_tts_response(
    content_type: str, chunks: AsyncIterator[bytes], audio_path: Path | Callable[[], Path], *, memory_limit: int = 0
) -> TtsResult:
    """Parse a POST /tts body from ``chunks`` (e.g. ``response.aiter_bytes()``), writing the audio
    to ``audio_path``, or keeping it in memory (``TtsResult.audio``, no file made) when the
    metadata declares at most ``memory_limit`` bytes. ``audio_path`` may be a callable, called
    only when a file is needed: a short clip then never makes the task's work directory."""
    mime, options = parse_options_header(content_type)
    if mime != b"multipart/form-data" or b"boundary" not in options:
        raise TaskfleetError(f"TTS server answered {content_type!r}, not multipart", code="bad_model_response", retryable=True)
    reader = _Reader(options[b"boundary"], audio_path, memory_limit)
    try:
        async for chunk in chunks:
            reader.parser.write(chunk)
        reader.parser.finalize()
    finally:
        reader.close()
    if not reader.metadata or not reader.saw_audio:
        raise TaskfleetError("TTS response lacks its metadata or audio part", code="bad_model_response", retryable=True)
    try:
        parsed = reader.parsed_metadata if reader.parsed_metadata is not None else json.loads(reader.metadata)
        metadata = TtsMetadata.model_validate(parsed)
    except ValueError as exc:
        raise TaskfleetError(f"TTS metadata is malformed: {exc}", code="bad_model_response") from None
    return TtsResult(metadata, reader.audio_path, None if reader.audio is None else bytes(reader.audio))

