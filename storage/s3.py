"""S3 and S3-compatible backend (``s3://bucket/prefix``; R2, MinIO and the like via ``endpoint_url``).

boto3 is driven from our thread pool. Its own retries are off: every request is retried by our
tenacity policy instead, per multipart part and per resumed download, so one failed part costs
one part, not the whole object. The multipart loop is written here rather than left to boto3's
TransferManager because that manager cannot retry a part of a one-pass stream and has its own
retry schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from storage.base import MiB, ObjectInfo, Storage, first_error, rewound
from storage.errors import (
    ACCESS_DENIED,
    NOT_FOUND,
    OBJECT_CHANGED,
    STORAGE_ERROR,
    THROTTLED,
    UNAVAILABLE,
    StorageError,
    code_for_http_status,
)

R2_HOST_SUFFIX = "r2.cloudflarestorage.com"
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_URL_EXPIRY_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NotFound", "404"}
_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AccountProblem",
    "403",
}
_THROTTLED_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
_UNAVAILABLE_CODES = {"InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed"}
_CHANGED_CODES = {"PreconditionFailed", "412"}


def provider_for_endpoint(endpoint_url: str | None) -> str:
    host = (urlsplit(endpoint_url).hostname or "") if endpoint_url else ""
    return "r2" if host == R2_HOST_SUFFIX or host.endswith("." + R2_HOST_SUFFIX) else "s3"


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        **options: Any,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.provider = provider_for_endpoint(endpoint_url)
        super().__init__(**options)
        self.part_size = max(self.part_size, MIN_PART_SIZE)
        self.bucket = bucket
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        if region is None and self.provider == "r2":
            region = "auto"  # R2 accepts only "auto" (or empty) as the signing region
        self.region = region
        config = Config(
            signature_version="s3v4",
            # One layer of retries (ours): botocore's would multiply attempts and hide the schedule.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=self.concurrency + 4,
            connect_timeout=10,
            read_timeout=60,
            # Custom endpoints rarely have per-bucket DNS names; path style works everywhere.
            s3={"addressing_style": "path"} if endpoint_url else {},
            # botocore >= 1.36 adds CRC checksums to every upload by default, which several
            # S3-compatible stores reject; send them only where the API requires one.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        import botocore.exceptions as bx
        import urllib3.exceptions as ux

        try:
            yield
        except bx.ClientError as exc:
            err = exc.response.get("Error", {})
            name = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            raise StorageError(f"S3 {name or status}: {err.get('Message') or exc}", code=_code(name, status)) from exc
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
            raise StorageError(f"S3 credentials: {exc}", code=ACCESS_DENIED) from exc
        except (
            bx.HTTPClientError,  # connection refused/reset/closed, timeouts
            bx.ResponseStreamingError,
            bx.IncompleteReadError,
            ux.HTTPError,
        ) as exc:
            raise StorageError(f"S3 unreachable: {exc}", code=UNAVAILABLE) from exc
        except bx.BotoCoreError as exc:
            raise StorageError(f"S3: {exc}", code=STORAGE_ERROR) from exc

    # ---- primitives ----

    def _head_sync(self, key: str) -> ObjectInfo:
        head = self._client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(
            size=int(head["ContentLength"]),
            content_type=head.get("ContentType") or "application/octet-stream",
            version=head.get("ETag"),
        )

    def _open_sync(self, key: str, offset: int, info: ObjectInfo, chunk_size: int) -> Iterator[bytes]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset:
            kwargs["Range"] = f"bytes={offset}-"
        if info.version:
            kwargs["IfMatch"] = info.version  # a resumed read must see the same object
        body = self._client.get_object(**kwargs)["Body"]
        return _body_chunks(body, chunk_size)

    def _delete_sync(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def _url_sync(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(key)}"
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=min(self.url_expiry_s, MAX_URL_EXPIRY_S)
        )

    def storage_url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_for_url(self, url: str) -> str | None:
        parts = urlsplit(url)
        path = unquote(parts.path)
        key: str | None = None
        if parts.scheme == "s3":
            if parts.netloc == self.bucket:
                key = path.lstrip("/")
        elif parts.scheme in ("http", "https"):
            if self.public_base_url and url.startswith(self.public_base_url + "/"):
                key = unquote(urlsplit(url[len(self.public_base_url) + 1 :]).path)
            elif self.endpoint_url and url.startswith(self.endpoint_url + "/"):
                key = _strip_bucket(path, self.bucket)
            elif (parts.hostname or "").endswith(".amazonaws.com") and self.endpoint_url is None:
                host = parts.hostname or ""
                if host.startswith(self.bucket + ".s3"):  # virtual-hosted style
                    key = path.lstrip("/")
                elif host.startswith("s3.") or host.startswith("s3-"):  # path style
                    key = _strip_bucket(path, self.bucket)
        return self._key_in_prefix(key) if key else None

    # ---- uploads ----

    def _put_object_sync(self, key: str, data: bytes, content_type: str) -> None:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=rewound(data), ContentType=content_type)

    def _create_upload_sync(self, key: str, content_type: str) -> str:
        return self._client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)[
            "UploadId"
        ]

    def _upload_part_sync(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        return self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=rewound(data)
        )["ETag"]

    def _complete_sync(self, key: str, upload_id: str, etags: dict[int, str]) -> None:
        self._client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]},
        )

    def _abort_sync(self, key: str, upload_id: str) -> None:
        self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    async def _put_parts(
        self, key: str, parts: AsyncIterator[bytes], size: int | None, content_type: str
    ) -> int:
        first = await anext(parts, b"")
        second = await anext(parts, None)
        if second is None:
            await self._call(self._put_object_sync, key, first, content_type)
            return len(first)
        upload_id = await self._call(self._create_upload_sync, key, content_type)
        held = [first, second]
        del first, second  # the list is the only reference, so a sent part can be freed
        try:
            etags, total = await self._upload_parts(key, upload_id, _prepend(held, parts))
            await self._complete(key, upload_id, etags, total)
        except BaseException:
            # Parts of an unfinished upload are billed until aborted.
            with contextlib.suppress(StorageError, asyncio.CancelledError):
                await asyncio.shield(self._run(self._abort_sync, key, upload_id))
            raise
        return total

    async def _upload_parts(
        self, key: str, upload_id: str, parts: AsyncIterator[bytes]
    ) -> tuple[dict[int, str], int]:
        """Upload parts ``concurrency`` at a time; the next part is read only once a slot frees,
        so at most ``concurrency + 1`` parts are in memory."""
        slots = asyncio.Semaphore(self.concurrency)
        etags: dict[int, str] = {}
        total = 0

        async def send(number: int, data: bytes) -> None:
            try:
                etags[number] = await self._call(self._upload_part_sync, key, upload_id, number, data)
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as group:
                number = 0
                async for data in parts:
                    number += 1
                    if number > self.max_parts:
                        raise StorageError(
                            f"{key}: more than {self.max_parts} parts of {self.part_size} bytes",
                            code=STORAGE_ERROR,
                            key=key,
                        )
                    total += len(data)
                    await slots.acquire()
                    group.create_task(send(number, data))
                    del data
        except BaseExceptionGroup as group_error:
            raise first_error(group_error) from None
        return etags, total

    async def _complete(self, key: str, upload_id: str, etags: dict[int, str], total: int) -> None:
        try:
            await self._call(self._complete_sync, key, upload_id, etags)
        except StorageError as exc:
            # A retried completion whose first try succeeded (its reply lost) may find no upload.
            # The object is ours if it carries the ETag S3 derives from exactly these parts.
            if exc.code != NOT_FOUND:
                raise
            info = await self._call(self._head_sync, key)
            etag = (info.version or "").strip('"')
            if "-" in etag:
                if etag != _multipart_etag(etags):
                    raise
            elif info.size != total:  # a store with other ETags: the size is all we can check
                raise


def _multipart_etag(etags: dict[int, str]) -> str:
    digests = b"".join(bytes.fromhex(etags[n].strip('"')) for n in sorted(etags))
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(etags)}"


def _code(name: str, status: int) -> str:
    if name in _NOT_FOUND_CODES:
        return NOT_FOUND
    if name in _DENIED_CODES:
        return ACCESS_DENIED
    if name in _THROTTLED_CODES:
        return THROTTLED
    if name in _CHANGED_CODES:
        return OBJECT_CHANGED
    if name in _UNAVAILABLE_CODES:
        return UNAVAILABLE
    return code_for_http_status(status)


def _body_chunks(body: Any, chunk_size: int) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(chunk_size)
    finally:
        body.close()


def _strip_bucket(path: str, bucket: str) -> str | None:
    head = f"/{bucket}/"
    return path[len(head) :] if path.startswith(head) else None


async def _prepend(held: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    while held:
        yield held.pop(0)
    async for item in rest:
        yield item
