"""Input downloads: streamed to the task's work directory, SSRF-guarded, stopped at the size cap.

http(s) goes through ``taskfleet.urlguard`` (every connection's addresses checked, redirects
included); ``s3://``, ``gs://`` and ``file://`` go through the storage package, ``file://`` only
inside the configured storage root.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import httpx

from consumer.errors import InputFetchError
from taskfleet.errors import InputTooLarge, TaskfleetError, UrlRefused
from taskfleet.urlguard import UrlGuard

log = logging.getLogger(__name__)

STORAGE_SCHEMES = ("s3", "gs", "file")
MAX_REDIRECTS = 5
_CHUNK = 1 << 20


class InputFetcher:
    def __init__(
        self,
        guard: UrlGuard,
        max_bytes: int,
        *,
        open_storage: Callable[[str], Any] | None = None,
        timeout_s: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.guard = guard
        self.max_bytes = max_bytes
        self._open_storage = open_storage
        self._http = httpx.AsyncClient(
            transport=transport or guard.transport(retries=1),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            trust_env=False,  # a proxy would connect for us and bypass the address check
            event_hooks={"request": [self._check_hop]},
        )
        self._foreign: dict[str, Any] = {}

    async def aclose(self) -> None:
        await self._http.aclose()
        for other in self._foreign.values():
            if hasattr(other, "aclose"):
                await other.aclose()
        self._foreign.clear()

    async def _check_hop(self, request: httpx.Request) -> None:
        # Each redirect hop passes the scheme rule too; its addresses are checked at connect time.
        self.guard.parse(request.url)

    async def fetch(self, url: str, dest: Path, *, storage: Any) -> int:
        """Download ``url`` to ``dest``; returns the number of bytes written."""
        scheme = urlsplit(url).scheme.lower()
        try:
            own_key = storage.key_for_url(url) if storage is not None else None
            if own_key is not None:
                # Our own storage (its s3/gs/file URL, or a served/presigned URL of it, such as what
                # POST /api/files returns): read it there rather than over HTTP.
                return await self._fetch_object(storage, own_key, dest, url)
            if scheme in ("http", "https"):
                return await self._fetch_http(url, dest)
            if scheme == "file":
                # file:// is how an operator hands in local files; anything outside the root is
                # the classic way to read /etc/passwd or the service's own secrets.
                raise UrlRefused("file:// inputs must lie inside the storage root", code="url_outside_storage_root")
            if scheme in STORAGE_SCHEMES:
                source, key = self._other_bucket(url)
                return await self._fetch_object(source, key, dest, url)
            raise UrlRefused(
                f"scheme {scheme or '(none)'!r} is not allowed for inputs (http, https, s3, gs, file inside storage)",
                code="url_scheme_not_allowed",
            )
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    async def _fetch_http(self, url: str, dest: Path) -> int:
        self.guard.parse(url)
        try:
            # identity: count the bytes as they come off the wire; a compressed body could inflate
            # far past the cap inside a single decoded chunk.
            async with self._http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                if response.status_code >= 400:
                    retryable = response.status_code >= 500 or response.status_code in (408, 429)
                    raise InputFetchError(
                        f"{_redact(url)} answered HTTP {response.status_code}",
                        code="input_not_found" if response.status_code in (404, 410) else "input_fetch_failed",
                        retryable=retryable,
                    )
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise self._too_large(url)
                return await self._write(response.aiter_bytes(_CHUNK), dest, url)
        except httpx.TooManyRedirects:
            raise InputFetchError(f"{_redact(url)}: more than {MAX_REDIRECTS} redirects", code="input_too_many_redirects") from None
        except httpx.UnsupportedProtocol as exc:
            raise UrlRefused(f"redirect to a disallowed scheme: {exc}", code="url_scheme_not_allowed") from None
        except httpx.InvalidURL as exc:
            raise UrlRefused(f"invalid URL: {exc}", code="url_invalid") from None
        except httpx.HTTPError as exc:
            raise InputFetchError(f"{_redact(url)}: {type(exc).__name__}: {exc}", retryable=True) from None

    async def _fetch_object(self, source: Any, key: str, dest: Path, url: str) -> int:
        try:
            return await self._write(source.stream(key, chunk_size=_CHUNK), dest, url)
        except TaskfleetError as exc:
            if exc.code == "not_found":
                raise InputFetchError(f"{_redact(url)} does not exist", code="input_not_found", retryable=False) from None
            raise

    def _other_bucket(self, url: str) -> tuple[Any, str]:
        """An s3:// or gs:// URL outside the configured prefix: read it with the same credentials."""
        if self._open_storage is None:
            raise UrlRefused(f"{url} is not in the configured storage", code="url_outside_storage_root")
        parts = urlsplit(url)
        root = f"{parts.scheme}://{parts.netloc}"
        if root not in self._foreign:
            self._foreign[root] = self._open_storage(root)
        key = parts.path.lstrip("/")
        if not key:
            raise UrlRefused(f"{url} names no object", code="url_invalid")
        return self._foreign[root], key

    async def _write(self, chunks: AsyncIterator[bytes], dest: Path, url: str) -> int:
        written = 0
        with open(dest, "wb") as fh:
            async for chunk in chunks:
                written += len(chunk)
                if written > self.max_bytes:
                    # Stop here: the rest of the body is never read (closing the stream drops it).
                    raise self._too_large(url)
                fh.write(chunk)
        return written

    def _too_large(self, url: str) -> InputTooLarge:
        return InputTooLarge(
            f"{_redact(url)} is larger than the input cap of {self.max_bytes / (1 << 20):g} MB",
            details={"max_bytes": self.max_bytes},
        )


def _redact(url: str) -> str:
    """The URL without its query: presigned URLs carry credentials there, and this text reaches task records."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?…" if parts.query else "")


def max_bytes_from_mb(mb: float) -> int:
    return int(mb * (1 << 20))

