"""Turn ``TASKFLEET_STORAGE_URL`` into a backend.

    file:///srv/taskfleet                      local directory (the embedded default)
    s3://bucket/prefix?endpoint_url=...&region=...&public_base_url=...
    gs://bucket/prefix?endpoint_url=...&project=...&public_base_url=...

Every scheme also takes ``part_size_mb`` and ``concurrency``. Unknown options are refused, so a
typo fails at start rather than silently using a default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from storage.base import MiB, Storage
from storage.errors import INVALID_CONFIG, StorageError
from storage.retry import RetryPolicy

_COMMON = {"public_base_url", "part_size_mb", "concurrency", "url_expiry_s"}
_OPTIONS = {
    "file": _COMMON,
    "s3": _COMMON | {"endpoint_url", "region"},
    "gs": _COMMON | {"endpoint_url", "project"},
}


def open_storage(
    url: str,
    *,
    public_base_url: str | None = None,
    url_expiry_s: int = 3600,
    retry_delays: Sequence[float] | None = None,
    **backend_options: Any,
) -> Storage:
    """Open the storage named by ``url``.

    ``public_base_url`` (argument): the task API's base URL, used by a ``file://`` store only:
    its files are served at ``{public_base_url}/files/{key}``. Cloud stores ignore it, so the
    API and consumers can pass their own URL whatever the backend; their results get presigned
    (S3, R2) or signed (GCS) URLs valid for ``url_expiry_s``.
    ``public_base_url`` (in the storage URL's query): a public or CDN base in front of the
    bucket; results then get plain ``{public_base_url}/{key}`` URLs (for ``file://``, it
    replaces the argument).
    ``retry_delays``: waits before each retry (default 1, 2, 4 s: three retries).
    ``backend_options`` go to the backend's constructor (e.g. ``credentials`` for GCS).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _OPTIONS:
        raise StorageError(
            f"storage URL must start with file://, s3:// or gs://, got {url!r}", code=INVALID_CONFIG
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - _OPTIONS[scheme]
    if unknown:
        raise StorageError(f"unknown storage URL options: {', '.join(sorted(unknown))}", code=INVALID_CONFIG)

    options: dict[str, Any] = {
        "public_base_url": query.get("public_base_url") or (public_base_url if scheme == "file" else None),
        "url_expiry_s": _int(query.get("url_expiry_s"), url_expiry_s, "url_expiry_s"),
        "retry": RetryPolicy.of(retry_delays),
    }
    if "part_size_mb" in query:
        options["part_size"] = _int(query["part_size_mb"], 0, "part_size_mb") * MiB
    if "concurrency" in query:
        options["concurrency"] = _int(query["concurrency"], 0, "concurrency")
    options.update(backend_options)

    if scheme == "file":
        from storage.local import LocalStorage

        if parts.netloc not in ("", "localhost") or not parts.path:
            raise StorageError(f"local storage URL must be file:///absolute/path, got {url!r}", code=INVALID_CONFIG)
        return LocalStorage(unquote(parts.path), **options)

    bucket = parts.netloc
    if not bucket:
        raise StorageError(f"storage URL names no bucket: {url!r}", code=INVALID_CONFIG)
    options["prefix"] = unquote(parts.path).strip("/")
    endpoint_url = query.get("endpoint_url") or None
    if scheme == "s3":
        from storage.s3 import S3Storage

        return S3Storage(
            bucket, endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3"), region=query.get("region") or None, **options
        )
    from storage.gcs import GCSStorage

    return GCSStorage(bucket, endpoint_url=endpoint_url, project=query.get("project") or None, **options)


def _int(raw: str | None, default: int, name: str) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StorageError(f"storage URL option {name} must be an integer, got {raw!r}", code=INVALID_CONFIG) from None
    if value <= 0:
        raise StorageError(f"storage URL option {name} must be positive", code=INVALID_CONFIG)
    return value
