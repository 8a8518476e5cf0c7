"""Errors the consumer raises on purpose; each decides on the spot how the task should end.

The runtime maps them: ``ModelServerUnavailable`` → release the task (attempt not counted) and back
off; any other ``TaskfleetError`` → fail with its code and ``retryable``; ``TaskCancelled`` → the
producer's cancel; ``TaskTimeout`` → the task's ``timeout_s`` ran out.
"""

from __future__ import annotations

from taskfleet.errors import ConfigError, TaskfleetError, Unavailable


class ModelServerUnavailable(Unavailable):
    """No model server of the kind could take the call (down, connect timeout, 503, overloaded).

    An outage is not the task's fault, so the runtime releases the task instead of failing it.
    """

    code = "model_server_unavailable"

    def __init__(self, message: str = "", *, kind: str = "", retry_after_s: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.kind = kind
        self.retry_after_s = retry_after_s


class ModelServerError(TaskfleetError):
    """A model server answered with an error that is not an outage (4xx bad input, 5xx crash)."""

    code, status = "model_server_error", 502


class ModelServerTimeout(TaskfleetError):
    """A model server accepted the call but did not answer in time; another attempt may succeed."""

    code, status, retryable = "model_server_timeout", 504, True


class InputFetchError(TaskfleetError):
    """An input URL could not be read; ``retryable`` says whether the source looked temporary."""

    code, status = "input_fetch_failed", 422


class TaskTimeout(TaskfleetError):
    code, status, retryable = "timed_out", 504, True  # the same code the API records when it reaps a timed-out lease


class TaskCancelled(TaskfleetError):
    code, status = "cancelled", 409


class NoModelServer(TaskfleetError):
    """The workflow asked for a model-server kind this consumer has no URLs for."""

    code = "model_server_not_configured"


class ProcessorError(TaskfleetError):
    """A processor raised something that is not a TaskfleetError (a bug or an unexpected library error).

    Retryable: the attempt cap stops a deterministic bug from looping, and a flaky one gets another go.
    """

    code, status, retryable = "processor_error", 500, True


class TokenRefused(ConfigError):
    """The task API refused this consumer's token (401/403). No retry can fix that, so the
    consumer stops with the reason instead of polling forever while looking healthy."""

    code = "token_refused"
