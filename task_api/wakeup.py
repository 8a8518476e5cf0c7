"""Long-poll wake-ups inside one API process.

Waiting fetches park here instead of polling the database. A new claimable task wakes one
waiter that serves its workflow (not all of them: a burst of 500 idle consumers must not all
race for one task); a waiter that then fills its whole ``limit`` passes the wake on, since more
work may be waiting. A lone create in this process can instead take a parked waiter out of
line and hand it the new task, already leased (``Dispatcher.take``, ``Queue.create``).
``/process`` callers wait here for their task to finish.

Signals come from the queue itself for changes this process made (both backends), and from
Postgres LISTEN/NOTIFY for other replicas' changes, so a create on one replica wakes a fetch
parked on another.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable


HANDOFF_AFTER_S = 0.002


class Waiter:
    """A fetch waiting for work. A bare future, not an ``asyncio.Event`` under ``wait_for``:
    its waker resumes the fetch in one loop step instead of three. The future's result is None
    for a wake (go and claim), or a task row already leased to this fetch's consumer (a hand-off
    from a create)."""

    __slots__ = ("workflows", "woken", "consumer_id", "host", "gone", "parked_at")

    def __init__(
        self,
        workflows: frozenset[str] | None,
        consumer_id: str,
        host: str | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> None:
        self.workflows = workflows  # None: any workflow
        self.woken: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.consumer_id = consumer_id
        self.host = host
        self.gone = gone
        self.parked_at: float | None = None  # loop time it began waiting on ``woken``; None mid-claim

    def park(self) -> None:
        self.parked_at = asyncio.get_running_loop().time()

    def hand(self, row: Any) -> None:
        if not self.woken.done():
            self.woken.set_result(row)

    @property
    def handed(self) -> Any:
        """The row handed to this fetch, if one was."""
        if self.woken.done() and not self.woken.cancelled():
            return self.woken.result()
        return None

    def serves(self, workflow: str | None) -> bool:
        return workflow is None or self.workflows is None or workflow in self.workflows

    def wake(self) -> None:
        self.hand(None)

    @property
    def is_woken(self) -> bool:
        return self.woken.done()


class Dispatcher:
    def __init__(self) -> None:
        self._waiters: deque[Waiter] = deque()
        self._done: dict[str, list[asyncio.Event]] = {}

    # -- fetch side -----------------------------------------------------------------------
    def register(self, waiter: Waiter) -> Waiter:
        """Register *before* looking for work, so a signal that lands mid-claim is not lost."""
        self._waiters.append(waiter)
        return waiter

    def take(self, workflow: str) -> Waiter | None:
        """A fetch parked for a while that serves ``workflow`` and whose consumer is still
        there, taken out of line so a new task can be leased to it directly.

        Only one parked for HANDOFF_AFTER_S: on a quiet queue the hand-off saves the pickup a
        claim, but in a busy stretch a fetch parks for a moment between tasks, and the claim
        its wake-up makes takes every task created meanwhile at once (a hand-off gives one;
        measured: about 10% more API CPU per task on Postgres under load)."""
        ready_before = asyncio.get_running_loop().time() - HANDOFF_AFTER_S
        for waiter in self._waiters:
            if (
                waiter.parked_at is not None and waiter.parked_at <= ready_before and not waiter.is_woken
                and waiter.serves(workflow) and not (waiter.gone is not None and waiter.gone())
            ):  # fmt: skip
                self._waiters.remove(waiter)
                return waiter
        return None

    def unregister(self, waiter: Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def pending(self, workflow: str | None = None, count: int = 1) -> int:
        """``count`` tasks of ``workflow`` (None: unknown) became claimable; how many woke."""
        woken = 0
        for waiter in list(self._waiters):
            if woken >= count:
                break
            if not waiter.is_woken and waiter.serves(workflow):
                waiter.wake()
                self._waiters.remove(waiter)
                woken += 1
        return woken

    # -- /process side ----------------------------------------------------------------------
    def watch(self, task_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._done.setdefault(task_id, []).append(event)
        return event

    def unwatch(self, task_id: str, event: asyncio.Event) -> None:
        events = self._done.get(task_id)
        if events and event in events:
            events.remove(event)
            if not events:
                del self._done[task_id]

    def finished(self, task_id: str) -> None:
        for event in self._done.pop(task_id, []):
            event.set()

    # -- Postgres NOTIFY --------------------------------------------------------------------
    def on_notify(self, channel: str, payload: str) -> None:
        if channel == "taskfleet_pending":
            self.pending(payload or None)
        elif channel == "taskfleet_done":
            self.finished(payload)
