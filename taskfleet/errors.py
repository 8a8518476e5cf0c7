"""The error hierarchy every process uses.

Each error carries a stable snake_case ``code`` that reaches HTTP bodies unchanged, the HTTP
status it maps to, and whether retrying could help -- decided where the error is raised.
"""

from __future__ import annotations

from typing import Any


class TaskfleetError(Exception):
    code = "internal_error"
    status = 500
    retryable = False

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        status: int | None = None,
        retryable: bool | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.code.replace("_", " ")
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.details = details

    def to_body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one error shape every HTTP answer of the system uses: ``{"error": {code, message[, details]}}``."""
    err: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        err["details"] = details
    return {"error": err}


def parse_error_body(
    body: bytes | str, status: int, *, fallback_prefix: str = "http", max_text: int = 500
) -> tuple[str, str]:
    """``(code, message)`` from an error answer; one that is not our shape gets ``<prefix>_<status>``
    and its first ``max_text`` characters as the message."""
    import json

    try:
        err = json.loads(body)["error"]
        return str(err["code"]), str(err.get("message", ""))
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return f"{fallback_prefix}_{status}", text[:max_text]


class BadRequest(TaskfleetError):
    code, status = "bad_request", 400


class Unauthorized(TaskfleetError):
    code, status = "unauthorized", 401


class Forbidden(TaskfleetError):
    code, status = "forbidden", 403


class NotFound(TaskfleetError):
    code, status = "not_found", 404


class Conflict(TaskfleetError):
    code, status = "conflict", 409


class LeaseLost(Conflict):
    """The caller's lease is no longer the task's current lease: the write was fenced off."""

    code = "lease_lost"


class PayloadTooLarge(TaskfleetError):
    code, status = "payload_too_large", 413


class InvalidInput(TaskfleetError):
    """Input that can never succeed: retrying the same task is pointless."""

    code, status = "invalid_input", 422


class InputTooLarge(InvalidInput):
    """An input over a size limit (bytes, pixels, seconds): never retried."""

    code, status = "input_too_large", 413


class Unavailable(TaskfleetError):
    """A dependency is down or full; the same call may succeed later."""

    code, status, retryable = "unavailable", 503, True


class DatabaseUnavailable(Unavailable):
    """The database could not be reached, or refused the statement before running it (restart,
    shutdown, too many connections, a locked SQLite file): nothing was changed, resending is safe."""

    code = "database_unavailable"
    retry_after_s = 1


class DatabaseFull(DatabaseUnavailable):
    """The database's disk is full: the statement was rolled back; it succeeds once space returns."""

    code = "database_full"


class CommitUnknown(Unavailable):
    """The connection was lost after a write was sent and before its answer came: the database
    may have committed it. Resend only what is idempotent (a create with its idempotency key)."""

    code = "commit_unknown"
    retry_after_s = 1


class TooManyRequests(TaskfleetError):
    """A producer is over one of its limits (CONTRACT §9); the answer's Retry-After says when
    to try again."""

    code, status, retryable = "rate_limited", 429, True

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class UrlRefused(TaskfleetError):
    """A URL the system was asked to fetch fails the input-safety rules (docs/api.md, "Input safety")."""

    code, status = "url_refused", 422


class ConfigError(TaskfleetError):
    code = "config_error"


class EngineUnavailable(Exception):
    """A model server's engine cannot run here (weights, binary or runtime missing).

    The server starts anyway and reports this reason as unhealthy instead of taking work.
    """
