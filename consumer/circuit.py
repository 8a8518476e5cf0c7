"""A per-server circuit breaker: stop calling a server that keeps failing, probe it again later.

Hand-written (about forty lines): the maintained Python breakers are either sync-first or tied to
a framework, and this one needs exactly three states driven by our own health probe.
"""

from __future__ import annotations

import time
from enum import IntEnum
from typing import Callable


class CircuitState(IntEnum):  # values are what the metrics gauge shows
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """closed → (``failure_threshold`` consecutive failures) → open → (``reset_s`` later) half-open.

    In half-open the next health probe decides: success closes the circuit, failure opens it again
    for twice as long (capped), so a server that stays down is probed less and less often.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_s: float = 5.0,
        max_reset_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.base_reset_s = reset_s
        self.max_reset_s = max(reset_s, max_reset_s)
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._reset_s = reset_s

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock() - self._opened_at >= self._reset_s:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def closed(self) -> bool:
        return self._opened_at is None

    @property
    def probe_due(self) -> bool:
        return self.state is not CircuitState.OPEN

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._reset_s = self.base_reset_s

    def record_failure(self) -> None:
        state = self.state
        self._failures += 1
        if state is CircuitState.HALF_OPEN:
            self._reset_s = min(self._reset_s * 2, self.max_reset_s)
            self._opened_at = self._clock()
        elif state is CircuitState.CLOSED and self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
