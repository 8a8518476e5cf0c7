"""The storage interface and the plumbing every backend shares.

A backend supplies a handful of blocking primitives (head, open-at-offset, delete, upload of
parts, URL); this class runs them on its own thread pool so SDK calls never block the event
loop, retries them per ``RetryPolicy``, and turns files, bytes and async streams into bounded
parts so no large object is ever held whole in memory.
"""

from __future__ import annotations

import asyncio
import functools
import io
import mmap
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from storage.errors import OBJECT_CHANGED, UNAVAILABLE, StorageError
from storage.keys import check_key, guess_content_type, join_key
from storage.retry import RetryPolicy

T = TypeVar("T")
# One object for ``Storage.put_files``: (key, a file's path or the bytes themselves, content type or None).
PutItem = tuple[str, str | os.PathLike[str] | bytes, str | None]

MiB = 1 << 20
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True)
class StoredObject:
    key: str
    url: str  # fetchable over HTTP: presigned or public (file:// only for a local store with no base URL)
    storage_url: str  # canonical: s3://bucket/key, gs://bucket/key, file:///root/key
    size: int
    content_type: str


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend's head returns; ``version`` pins reads to one version of the object."""

    size: int
    content_type: str
    version: str | None = None


class Storage(ABC):
    provider: str = ""
    max_parts: int = 10_000  # S3's limit on multipart parts; part size grows to stay under it

    def __init__(
        self,
        *,
        prefix: str = "",
        public_base_url: str | None = None,
        url_expiry_s: int = 3600,
        retry: RetryPolicy | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.prefix = prefix.strip("/")
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.url_expiry_s = int(url_expiry_s)
        self.retry = retry or RetryPolicy()
        self.part_size = int(part_size)
        self.concurrency = max(1, int(concurrency))
        # Our own pool: a 2 GB transfer must not starve the loop's default executor, which
        # asyncio also uses for DNS lookups.
        self._executor = ThreadPoolExecutor(
            max_workers=self.concurrency + 4, thread_name_prefix=f"storage-{self.provider}"
        )

    # ---- backend primitives (blocking unless marked async; run on the pool) ----

    @abstractmethod
    def _errors(self) -> AbstractContextManager[Any]:
        """A context manager translating the SDK's exceptions into StorageError."""

    @abstractmethod
    def _head_sync(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _open_sync(self, key: str, offset: int, info: ObjectInfo, chunk_size: int) -> Iterator[bytes]:
        """An iterator over the object's bytes from ``offset`` (one streamed read)."""

    @abstractmethod
    def _delete_sync(self, key: str) -> None: ...

    @abstractmethod
    def _url_sync(self, key: str) -> str: ...

    @abstractmethod
    async def _put_parts(
        self, key: str, parts: AsyncIterator[bytes], size: int | None, content_type: str
    ) -> int:
        """Store the object made of ``parts`` (each ``part_size`` bytes but the last); return its size."""

    @abstractmethod
    def storage_url_for(self, key: str) -> str:
        """The canonical URL of ``key``: s3://, gs:// or file://."""

    @abstractmethod
    def key_for_url(self, url: str) -> str | None:
        """The key for one of this storage's own URLs (canonical, public or signed), else None."""

    # ---- running blocking calls ----

    def _translated(self, fn: Callable[..., T], *args: Any) -> T:
        with self._errors():
            return fn(*args)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._translated, fn, *args))

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run local file I/O on the pool; its OSErrors are the caller's to see, untranslated."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``_run`` with retries on retryable errors."""
        async for attempt in self.retry.async_retrying():
            with attempt:
                return await self._run(fn, *args)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    # ---- the interface ----

    def output_key(self, workflow: str, task_id: str, name: str) -> str:
        return check_key(join_key(self.prefix, workflow, task_id, name))

    async def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> StoredObject:
        check_key(key)
        view = memoryview(data).cast("B")
        step = self._part_size_for(len(view))

        async def parts() -> AsyncIterator[bytes]:
            for start in range(0, max(len(view), 1), step):
                yield bytes(view[start : start + step])

        return await self._put(key, parts(), len(view), content_type)

    async def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> StoredObject:
        check_key(key)
        path = Path(path)
        size = (await self._io(path.stat)).st_size
        return await self._put(key, self._file_parts(path, self._part_size_for(size)), size, content_type)

    async def put_files(self, items: Sequence[PutItem]) -> list[StoredObject]:
        """Store several objects, each item (key, source, content type or None), and return them
        in order; a source is a file's path, or ``bytes`` to store as they are. Here they upload
        side by side, and the first failure stops the rest; a backend may do better (local storage
        writes them all, then syncs them together)."""
        uploads: list[asyncio.Task[StoredObject]] = []
        try:
            async with asyncio.TaskGroup() as group:
                for key, source, content_type in items:
                    put = (
                        self.put_bytes(key, source, content_type)
                        if isinstance(source, bytes)
                        else self.put_file(key, source, content_type)
                    )
                    uploads.append(group.create_task(put))
        except BaseExceptionGroup as group_error:
            raise first_error(group_error) from None
        return [upload.result() for upload in uploads]

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes] | Iterable[bytes],
        content_type: str | None = None,
    ) -> StoredObject:
        check_key(key)
        return await self._put(key, rechunk(chunks, self.part_size), None, content_type)

    async def _put(
        self, key: str, parts: AsyncIterator[bytes], size: int | None, content_type: str | None
    ) -> StoredObject:
        content_type = content_type or guess_content_type(key)
        try:
            written = await self._put_parts(key, parts, size, content_type)
        finally:
            await _aclose(parts)
        if size is not None and written != size:
            raise StorageError(
                f"{key}: source changed while uploading ({written} of {size} bytes)",
                code=OBJECT_CHANGED,
                key=key,
            )
        return await self._stored(key, written, content_type)

    async def _stored(self, key: str, size: int, content_type: str) -> StoredObject:
        return StoredObject(
            key=key,
            url=await self.url_for(key),
            storage_url=self.storage_url_for(key),
            size=size,
            content_type=content_type,
        )

    async def head(self, key: str) -> StoredObject:
        """The stored object's size and content type, with a fresh URL."""
        check_key(key)
        info = await self._call(self._head_sync, key)
        return await self._stored(key, info.size, info.content_type)

    async def exists(self, key: str) -> bool:
        check_key(key)
        try:
            await self._call(self._head_sync, key)
        except StorageError as exc:
            if exc.code == "not_found":
                return False
            raise
        return True

    async def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error (the end state is the same)."""
        check_key(key)
        await self._call(self._delete_sync, key)

    async def url_for(self, key: str) -> str:
        check_key(key)
        return await self._call(self._url_sync, key)

    async def stream(self, key: str, chunk_size: int = MiB) -> AsyncIterator[bytes]:
        """Yield the object's bytes. A connection lost midway is resumed at the byte reached,
        pinned to the version first seen, so the caller never sees a repeat or a mix."""
        check_key(key)
        info = await self._call(self._head_sync, key)
        offset = 0
        reader: Iterator[bytes] | None = None
        try:
            while offset < info.size:
                chunk = b""
                async for attempt in self.retry.async_retrying():
                    with attempt:
                        try:
                            if reader is None:
                                reader = await self._run(self._open_sync, key, offset, info, chunk_size)
                            chunk = await self._run(next, reader, b"")
                            if not chunk:
                                raise StorageError(
                                    f"{key}: stream ended at byte {offset} of {info.size}",
                                    code=UNAVAILABLE,
                                    key=key,
                                )
                        except StorageError:
                            if reader is not None:
                                await self._close_reader(reader)
                                reader = None
                            raise
                offset += len(chunk)
                if offset > info.size:
                    raise StorageError(f"{key}: object grew while reading", code=OBJECT_CHANGED, key=key)
                yield chunk
        finally:
            if reader is not None:
                await self._close_reader(reader)

    async def _close_reader(self, reader: Iterator[bytes]) -> None:
        close = getattr(reader, "close", None)
        if close is not None:
            try:
                await self._run(close)
            except (StorageError, ValueError):
                # A broken connection has nothing left to save; a read still running in the
                # pool (its await was cancelled) closes the connection itself when it ends.
                pass

    async def get_bytes(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.stream(key, chunk_size=8 * MiB)])

    async def download_to(self, key: str, path: str | os.PathLike[str]) -> int:
        """Stream ``key`` into ``path`` (written beside it, then renamed: never half a file)."""
        path = Path(path)
        stream = self.stream(key)
        try:
            return await write_atomically(path, stream, self._io)
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.storage_url_for(self.prefix)}>"

    # ---- helpers for subclasses ----

    def _part_size_for(self, size: int) -> int:
        """``part_size``, grown in whole MiB when ``size`` would need more than ``max_parts`` parts."""
        needed = -(-size // self.max_parts)
        return max(self.part_size, -(-needed // MiB) * MiB)

    async def _file_parts(self, path: Path, part_size: int) -> AsyncIterator[bytes]:
        """Read ``path`` a part at a time on the pool; the consumer pulls, so memory stays bounded."""
        fh = await self._io(open, path, "rb", 0)
        try:
            first = True
            while True:
                part = new_part(part_size)
                filled = await self._io(_read_into, fh, part)
                if filled == 0:
                    part.close()
                    if first:  # an empty file is one empty part
                        yield b""
                    return
                first = False
                if filled < part_size:
                    part.resize(filled)
                yield part  # type: ignore[misc]
                del part
                if filled < part_size:
                    return
        finally:
            await self._io(fh.close)

    def _key_in_prefix(self, key: str) -> str | None:
        """``key`` if it is a valid key inside this storage's prefix, else None."""
        try:
            check_key(key)
        except StorageError:
            return None
        if self.prefix and not key.startswith(self.prefix + "/"):
            return None
        return key


async def rechunk(chunks: AsyncIterable[bytes] | Iterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Regroup a stream of any-sized chunks into ``size``-byte parts (the last may be shorter;
    an empty stream gives one empty part, so every object has at least one)."""
    part: mmap.mmap | None = None
    filled = 0
    emitted = False
    async for chunk in _aiter(chunks):
        if isinstance(chunk, str):
            raise TypeError("put_stream needs bytes, got str")
        view = memoryview(chunk).cast("B")
        while view:
            if part is None:
                part, filled = new_part(size), 0
            take = min(len(view), size - filled)
            part.write(view[:take])
            filled += take
            view = view[take:]
            if filled == size:
                yield part  # type: ignore[misc]
                part, emitted = None, True
    if part is not None:
        part.resize(filled)
        yield part  # type: ignore[misc]
    elif not emitted:
        yield b""


def _read_into(fh: io.RawIOBase, buf: mmap.mmap) -> int:
    """Fill ``buf`` from ``fh``; fewer bytes only at end of file (a raw read may return less)."""
    view = memoryview(buf)
    filled = 0
    try:
        while filled < len(view):
            n = fh.readinto(view[filled:])
            if not n:
                break
            filled += n
    finally:
        view.release()
    return filled


def new_part(size: int) -> mmap.mmap:
    """A buffer for one part, mapped straight from the kernel.

    Parts are several MiB and come and go at the rate of the transfer. From malloc, glibc's
    sliding mmap threshold soon serves them from per-thread arenas that keep the memory after
    it is freed (RSS grew ~140 MB on a 256 MB upload); an anonymous map is returned to the
    kernel the moment the last reference goes.
    """
    return mmap.mmap(-1, size)


def rewound(part: bytes | mmap.mmap) -> bytes | mmap.mmap:
    """``part`` ready to be sent again from its first byte (SDKs read mmaps as files)."""
    if isinstance(part, mmap.mmap):
        part.seek(0)
    return part


def as_file(part: bytes | mmap.mmap) -> io.BufferedIOBase | mmap.mmap:
    return rewound(part) if isinstance(part, mmap.mmap) else io.BytesIO(part)


async def _aiter(chunks: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if hasattr(chunks, "__aiter__"):
        async for chunk in chunks:  # type: ignore[union-attr]
            yield chunk
    else:
        for chunk in chunks:  # type: ignore[union-attr]
            yield chunk


async def _aclose(it: AsyncIterator[bytes]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to surface from a failed TaskGroup: the first that is not a cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


async def write_atomically(
    path: Path,
    chunks: AsyncIterable[bytes],
    run: Callable[..., Any],
    *,
    fsync: bool = False,
) -> int:
    """Write ``chunks`` to a temporary file beside ``path`` and rename it into place.

    Readers see the old file or the whole new one, never a part. ``run`` executes a blocking
    call off the event loop.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in chunks:
                await run(fh.write, chunk)
                written += len(chunk)
            await run(fh.flush)
            if fsync:
                await run(os.fsync, fh.fileno())
        await run(os.replace, tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written
