"""Object keys: the one key syntax every backend accepts, and content types guessed from names.

Keys are the same on every backend (``a/b/c.png``: no leading slash, no empty, ``.`` or ``..``
segments), so a key that works locally works on S3 and GCS, and a local key can never climb out
of the storage root.
"""

from __future__ import annotations

import mimetypes

from storage.errors import INVALID_KEY, StorageError

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_KEY_BYTES = 1024  # S3's and GCS's limit

# mimetypes reads the host's /etc/mime.types, which differs between machines and lacks some
# types we emit; pin the ones our workflows produce so every host labels them the same.
_PINNED_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".json": "application/json",
    ".txt": "text/plain",
}


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ``invalid_key``."""
    if not isinstance(key, str) or not key:
        raise StorageError("object key must be a non-empty string", code=INVALID_KEY, key=str(key))
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise StorageError("object key longer than 1024 bytes", code=INVALID_KEY, key=key)
    if key.startswith("/") or "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise StorageError(f"invalid object key {key!r}", code=INVALID_KEY, key=key)
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"invalid object key {key!r}", code=INVALID_KEY, key=key)
    return key


def join_key(*parts: str) -> str:
    """Join key segments, skipping empty ones (an empty prefix adds nothing)."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def guess_content_type(key: str) -> str:
    dot = key.rfind(".")
    if dot > key.rfind("/"):
        pinned = _PINNED_TYPES.get(key[dot:].lower())
        if pinned:
            return pinned
    guessed, _ = mimetypes.guess_type(key, strict=False)
    return guessed or DEFAULT_CONTENT_TYPE
