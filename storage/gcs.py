"""Google Cloud Storage backend (``gs://bucket/prefix``).

Metadata calls and small uploads go through google-cloud-storage. Large uploads use a resumable
session that the library opens; its chunks are sent here, each retried by our tenacity policy
after asking the server how much it kept, so a 2 GB upload survives a 503 on one chunk without
starting over and without holding more than a few chunks in memory. Downloads stream the
generation-pinned media link through an authorized session and resume at the byte reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from storage.base import MiB, ObjectInfo, Storage, as_file, rewound
from storage.errors import (
    ACCESS_DENIED,
    INVALID_CONFIG,
    NOT_FOUND,
    OBJECT_CHANGED,
    STORAGE_ERROR,
    THROTTLED,
    UNAVAILABLE,
    StorageError,
    code_for_http_status,
)

log = logging.getLogger("storage")

GOOGLE_ENDPOINT = "https://storage.googleapis.com"
CHUNK_ALIGN = 256 * 1024  # GCS wants every resumable chunk but the last in multiples of this
DEFAULT_GCS_PART_SIZE = 16 * MiB
MAX_URL_EXPIRY_S = 7 * 24 * 3600  # V4 signed URLs live at most a week
_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
_DONE = -1


class GCSStorage(Storage):
    provider = "gcs"
    max_parts = 1 << 40  # a resumable upload has no part count limit

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        project: str | None = None,
        credentials: Any = None,
        **options: Any,
    ) -> None:
        import google.auth
        from google.auth.credentials import AnonymousCredentials
        from google.auth.transport.requests import AuthorizedSession
        from google.cloud import storage as gcs
        from requests.adapters import HTTPAdapter

        options.setdefault("part_size", DEFAULT_GCS_PART_SIZE)
        super().__init__(**options)
        if self.part_size % CHUNK_ALIGN:
            raise StorageError("GCS part size must be a multiple of 256 KiB", code=INVALID_CONFIG)
        self.bucket_name = bucket
        endpoint_url = endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST") or None
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        if credentials is None:
            try:
                credentials, default_project = google.auth.default(scopes=_SCOPES)
                project = project or default_project
            except google.auth.exceptions.DefaultCredentialsError:
                # Emulators and public buckets need none; a real bucket will answer access_denied.
                log.warning("storage: no Google credentials found, using anonymous access")
                credentials = AnonymousCredentials()
        self._credentials = credentials
        self._anonymous = isinstance(credentials, AnonymousCredentials)
        self._can_sign = not self._anonymous
        self._client = gcs.Client(
            project=project or "<none>",
            credentials=credentials,
            client_options={"api_endpoint": self.endpoint_url} if self.endpoint_url else None,
        )
        self._bucket = self._client.bucket(bucket)
        # Chunk uploads and streamed downloads use this session directly; the pool is sized for
        # our thread pool so concurrent transfers do not queue for a connection.
        self._session = AuthorizedSession(credentials)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.concurrency + 4)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._timeout = (10, 120)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        import google.api_core.exceptions as gx
        import google.auth.exceptions as ax
        import requests
        import urllib3.exceptions as ux

        try:
            yield
        except gx.GoogleAPICallError as exc:
            code = _code_for_api_error(exc, gx)
            raise StorageError(f"GCS {exc.code}: {exc.message}", code=code) from exc
        except ax.RefreshError as exc:
            raise StorageError(f"GCS credentials: {exc}", code=ACCESS_DENIED) from exc
        except (ax.TransportError, requests.ConnectionError, requests.Timeout) as exc:
            raise StorageError(f"GCS unreachable: {exc}", code=UNAVAILABLE) from exc
        except (requests.exceptions.ChunkedEncodingError, ux.HTTPError) as exc:
            raise StorageError(f"GCS connection broken: {exc}", code=UNAVAILABLE) from exc
        except requests.RequestException as exc:
            raise StorageError(f"GCS: {exc}", code=STORAGE_ERROR) from exc

    # ---- primitives ----

    def _head_sync(self, key: str) -> ObjectInfo:
        blob = self._bucket.get_blob(key, retry=None, timeout=self._timeout)
        if blob is None:
            raise StorageError(f"no such object: gs://{self.bucket_name}/{key}", code=NOT_FOUND, key=key)
        media_link = blob.media_link or self._media_link(key, blob.generation)
        # The media link names the generation, so every (re)opened read sees the same object.
        return ObjectInfo(int(blob.size or 0), blob.content_type or "application/octet-stream", media_link)

    def _media_link(self, key: str, generation: int | None) -> str:
        base = self.endpoint_url or GOOGLE_ENDPOINT
        link = f"{base}/download/storage/v1/b/{self.bucket_name}/o/{quote(key, safe='')}?alt=media"
        return f"{link}&generation={generation}" if generation else link

    def _open_sync(self, key: str, offset: int, info: ObjectInfo, chunk_size: int) -> Iterator[bytes]:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = info.version or self._media_link(key, None)
        resp = self._session.get(url, headers=headers, stream=True, timeout=self._timeout)
        if resp.status_code == 404:
            resp.close()
            raise StorageError(f"gs://{self.bucket_name}/{key} changed or vanished while reading", code=OBJECT_CHANGED, key=key)
        _raise_for(resp, key)
        if offset and resp.status_code != 206:
            resp.close()
            raise StorageError(f"GCS ignored the range request for {key}", code=STORAGE_ERROR, key=key)
        return _response_chunks(resp, chunk_size)

    def _delete_sync(self, key: str) -> None:
        import google.api_core.exceptions as gx

        with contextlib.suppress(gx.NotFound):
            self._bucket.delete_blob(key, retry=None, timeout=self._timeout)

    def _url_sync(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(key)}"
        if self._can_sign:
            try:
                return self._signed_url(key)
            except (AttributeError, ValueError, TypeError) as exc:
                # Credentials that cannot sign (user credentials, GCE without signBlob): public URLs.
                log.warning("storage: cannot sign GCS URLs (%s); returning public URLs", exc)
                self._can_sign = False
        return f"{self.endpoint_url or GOOGLE_ENDPOINT}/{self.bucket_name}/{quote(key)}"

    def _signed_url(self, key: str) -> str:
        from google.auth.credentials import Signing

        kwargs: dict[str, Any] = {}
        if not isinstance(self._credentials, Signing):
            # GCE/GKE credentials sign through the IAM signBlob API with their access token.
            from google.auth.transport.requests import Request

            if not self._credentials.valid:
                self._credentials.refresh(Request())
            kwargs = {
                "service_account_email": self._credentials.service_account_email,
                "access_token": self._credentials.token,
            }
        return self._bucket.blob(key).generate_signed_url(
            version="v4",
            expiration=datetime.timedelta(seconds=min(self.url_expiry_s, MAX_URL_EXPIRY_S)),
            method="GET",
            api_access_endpoint=self.endpoint_url or GOOGLE_ENDPOINT,
            credentials=self._credentials if not kwargs else None,
            **kwargs,
        )

    def storage_url_for(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{key}"

    def key_for_url(self, url: str) -> str | None:
        parts = urlsplit(url)
        path = unquote(parts.path)
        host = parts.hostname or ""
        key: str | None = None
        bucket_path = f"/{self.bucket_name}/"
        media_path = f"/download/storage/v1/b/{self.bucket_name}/o/"
        if parts.scheme == "gs":
            if parts.netloc == self.bucket_name:
                key = path.lstrip("/")
        elif parts.scheme in ("http", "https"):
            if self.public_base_url and url.startswith(self.public_base_url + "/"):
                key = unquote(urlsplit(url[len(self.public_base_url) + 1 :]).path)
            elif host == f"{self.bucket_name}.storage.googleapis.com":
                key = path.lstrip("/")
            elif host in ("storage.googleapis.com", "storage.cloud.google.com") or (
                self.endpoint_url and url.startswith(self.endpoint_url + "/")
            ):
                if path.startswith(media_path):
                    key = path[len(media_path) :]
                elif path.startswith(bucket_path):
                    key = path[len(bucket_path) :]
        return self._key_in_prefix(key) if key else None

    # ---- uploads ----

    def _upload_small_sync(self, key: str, data: bytes, content_type: str) -> None:
        self._bucket.blob(key).upload_from_file(
            as_file(data), size=len(data), content_type=content_type, retry=None, timeout=self._timeout
        )

    def _create_session_sync(self, key: str, content_type: str, size: int | None) -> str:
        return self._bucket.blob(key).create_resumable_upload_session(
            content_type=content_type, size=size, checksum=None, retry=None, timeout=self._timeout
        )

    def _put_chunk_sync(self, session_url: str, data: bytes, start: int, total: int | None) -> int:
        """PUT ``data`` at ``start``; return how many bytes the server holds, or _DONE at the end.

        The server may keep only part of a chunk; the rest is sent again at once.
        """
        end = start + len(data)
        while True:
            size = "*" if total is None else str(total)
            headers = {"Content-Range": f"bytes {start}-{end - 1}/{size}"}
            resp = self._session.put(session_url, data=rewound(data), headers=headers, timeout=self._timeout)
            persisted = self._resumable_reply(resp)
            if persisted == _DONE or persisted >= end:
                return persisted
            if persisted < start:
                raise StorageError(
                    f"GCS holds {persisted} bytes, fewer than the {start} it confirmed", code=STORAGE_ERROR
                )
            data, start = data[persisted - start :], persisted

    def _query_sync(self, session_url: str, total: int | None) -> int:
        headers = {"Content-Range": f"bytes */{'*' if total is None else total}"}
        resp = self._session.put(session_url, data=b"", headers=headers, timeout=self._timeout)
        return self._resumable_reply(resp, query=True)

    def _resumable_reply(self, resp: Any, query: bool = False) -> int:
        with resp:
            if resp.status_code in (200, 201):
                return _DONE
            if resp.status_code != 308:
                _raise_for(resp, None)
                raise StorageError(f"GCS answered {resp.status_code} to a chunk", code=STORAGE_ERROR)
            match = re.fullmatch(r"bytes=0-(\d+)", resp.headers.get("Range", ""))
            if not match:
                return 0
            last = int(match.group(1))
            # gcp-storage-emulator reports "bytes=0-0" for an empty session; GCS keeps whole
            # 256 KiB units, so one byte is never a genuine answer to a status query.
            if query and last == 0:
                return 0
            return last + 1

    async def _send_chunk(self, session_url: str, data: bytes, start: int, total: int | None) -> None:
        async for attempt in self.retry.async_retrying():
            with attempt:
                offset = start
                if attempt.retry_state.attempt_number > 1:
                    # The failed try may have landed in part: continue from what the server has.
                    offset = await self._run(self._query_sync, session_url, total)
                    if offset == _DONE or offset >= start + len(data):
                        return
                    if offset < start:
                        raise StorageError(
                            f"GCS lost confirmed bytes (holds {offset}, expected {start})", code=STORAGE_ERROR
                        )
                rest = data if offset == start else data[offset - start :]
                await self._run(self._put_chunk_sync, session_url, rest, offset, total)

    async def _put_parts(
        self, key: str, parts: AsyncIterator[bytes], size: int | None, content_type: str
    ) -> int:
        current = await anext(parts, b"")
        upcoming = await anext(parts, None)
        if upcoming is None:
            await self._call(self._upload_small_sync, key, current, content_type)
            return len(current)
        session_url = await self._call(self._create_session_sync, key, content_type, size)
        offset = 0
        while True:
            # Read the part after next while this one uploads: two parts in memory, one in flight.
            read_ahead = asyncio.ensure_future(anext(parts, None)) if upcoming is not None else None
            try:
                total = offset + len(current) if upcoming is None else size
                await self._send_chunk(session_url, current, offset, total)
            except BaseException:
                if read_ahead is not None:
                    read_ahead.cancel()
                    with contextlib.suppress(BaseException):
                        await read_ahead
                with contextlib.suppress(Exception):
                    await self._run(self._session.delete, session_url)  # cancel the session
                raise
            offset += len(current)
            if upcoming is None:
                return offset
            current, upcoming = upcoming, (await read_ahead if read_ahead is not None else None)


def _code_for_api_error(exc: Any, gx: Any) -> str:
    if isinstance(exc, gx.NotFound):
        return NOT_FOUND
    if isinstance(exc, (gx.Forbidden, gx.Unauthorized)):
        return ACCESS_DENIED
    if isinstance(exc, gx.TooManyRequests):
        return THROTTLED
    if isinstance(exc, gx.PreconditionFailed):
        return OBJECT_CHANGED
    return code_for_http_status(int(exc.code or 0))


def _raise_for(resp: Any, key: str | None) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.text[:300]  # GCS explains errors in a short JSON body
    except Exception:  # noqa: BLE001 -- the status alone still says what happened
        body = ""
    resp.close()
    raise StorageError(f"GCS {resp.status_code}: {body}".strip(), code=code_for_http_status(resp.status_code), key=key)


def _response_chunks(resp: Any, chunk_size: int) -> Iterator[bytes]:
    with resp:
        yield from resp.iter_content(chunk_size)
