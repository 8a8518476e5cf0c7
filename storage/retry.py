"""How storage calls are retried: a fixed schedule of waits (1, 2, 4 s by default) via tenacity.

Only errors raised as retryable (5xx, throttling, dropped connections) are retried; the last
error is re-raised unchanged so its code reaches the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_chain,
    wait_fixed,
)

from storage.errors import StorageError

log = logging.getLogger("storage")


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and exc.retryable


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("storage: attempt %d failed (%s); retrying in %.2gs", state.attempt_number, exc, wait)


@dataclass(frozen=True)
class RetryPolicy:
    """``delays[i]`` is the wait before retry ``i + 1``; there are ``len(delays)`` retries."""

    delays: tuple[float, ...] = (1.0, 2.0, 4.0)

    @classmethod
    def of(cls, delays: Sequence[float] | None) -> RetryPolicy:
        return cls() if delays is None else cls(tuple(float(d) for d in delays))

    def _kwargs(self) -> dict:
        wait = wait_chain(*[wait_fixed(d) for d in self.delays]) if self.delays else wait_fixed(0)
        return dict(
            stop=stop_after_attempt(len(self.delays) + 1),
            wait=wait,
            retry=retry_if_exception(_is_retryable),
            reraise=True,
            before_sleep=_log_retry,
        )

    def async_retrying(self) -> AsyncRetrying:
        return AsyncRetrying(**self._kwargs())
