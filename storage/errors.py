"""The one error type every storage backend raises, with stable codes.

Backends translate their SDK's exceptions into these codes where the call is made, so the
retry policy and the callers (task API, consumer) never look at boto3 or google exceptions.
"""

from __future__ import annotations

from taskfleet.errors import TaskfleetError

NOT_FOUND = "not_found"
ACCESS_DENIED = "access_denied"
UNAVAILABLE = "unavailable"
THROTTLED = "throttled"
INVALID_KEY = "invalid_key"
INVALID_CONFIG = "invalid_storage_config"
OBJECT_CHANGED = "object_changed"
STORAGE_ERROR = "storage_error"

# The HTTP status a code maps to when it reaches an API response. A storage that denies us
# is our misconfiguration, not the caller's, hence 502 rather than 403.
_STATUS = {
    NOT_FOUND: 404,
    INVALID_KEY: 400,
    UNAVAILABLE: 503,
    THROTTLED: 503,
    ACCESS_DENIED: 502,
    OBJECT_CHANGED: 502,
    INVALID_CONFIG: 500,
    STORAGE_ERROR: 502,
}
_RETRYABLE = {UNAVAILABLE, THROTTLED}


class StorageError(TaskfleetError):
    """A storage operation failed; ``code`` says how, ``retryable`` whether trying again may help."""

    code, status = STORAGE_ERROR, 502

    def __init__(
        self,
        message: str = "",
        *,
        code: str = STORAGE_ERROR,
        retryable: bool | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code,
            status=_STATUS.get(code, 502),
            retryable=(code in _RETRYABLE) if retryable is None else retryable,
            details={"key": key} if key is not None else None,
        )
        self.key = key

    def __repr__(self) -> str:
        return f"StorageError(code={self.code!r}, retryable={self.retryable}, message={self.message!r})"


def code_for_http_status(status: int) -> str:
    """The storage code for an HTTP status returned by an object store."""
    if status == 404:
        return NOT_FOUND
    if status in (401, 403):
        return ACCESS_DENIED
    if status == 412:
        return OBJECT_CHANGED
    if status == 429:
        return THROTTLED
    if status == 408 or status >= 500:
        return UNAVAILABLE
    return STORAGE_ERROR
