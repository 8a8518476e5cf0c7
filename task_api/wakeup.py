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

# What a parked fetch is woken with when one of its consumer's leases ends and it asked to be
# (``wake_on_finish``), or when the server shuts down: return empty now, so the consumer polls
# again (with the slot that freed; at another replica, or this one once it is back).
REPLAN = object()


class Watch:
    """A /process caller's wait for its task to end; ``row`` is the ended task's whole row where
    a complete or fail in this process ended it. None otherwise (another replica's NOTIFY, a
    cancel, an expiry: their rows are partial or elsewhere), and the caller reads the task."""

    __slots__ = ("event", "row")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.row: Any = None


class Waiter:
    """A fetch waiting for work. A bare future, not an ``asyncio.Event`` under ``wait_for``:
    its waker resumes the fetch in one loop step instead of three. The future's result is None
    for a wake (go and claim), or a task row already leased to this fetch's consumer (a hand-off
    from a create)."""

    __slots__ = ("workflows", "woken", "consumer_id", "host", "gone", "parked_at", "wake_on_finish")

    def __init__(
        self,
        workflows: frozenset[str] | None,
        consumer_id: str,
        host: str | None = None,
        gone: Callable[[], bool] | None = None,
        wake_on_finish: bool = False,
    ) -> None:
        self.workflows = workflows  # None: any workflow
        self.woken: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.consumer_id = consumer_id
        self.host = host
        self.gone = gone
        self.parked_at: float | None = None  # loop time it began waiting on ``woken``; None mid-claim
        self.wake_on_finish = wake_on_finish

    def park(self) -> None:
        self.parked_at = asyncio.get_running_loop().time()

    def hand(self, row: Any) -> None:
        if not self.woken.done():
            self.woken.set_result(row)

    @property
    def handed(self) -> Any:
        """The row handed to this fetch, if one was."""
        if self.woken.done() and not self.woken.cancelled():
            result = self.woken.result()
            return None if result is REPLAN else result
        return None

    @property
    def replanning(self) -> bool:
        """Woken because one of its consumer's leases ended (see ``Dispatcher.lease_ended``)."""
        return self.woken.done() and not self.woken.cancelled() and self.woken.result() is REPLAN

    def serves(self, workflow: str | None) -> bool:
        return workflow is None or self.workflows is None or workflow in self.workflows

    def wake(self) -> None:
        self.hand(None)

    def replan(self) -> None:
        """End the wait empty-handed (see REPLAN)."""
        self.hand(REPLAN)

    @property
    def is_woken(self) -> bool:
        return self.woken.done()


class Dispatcher:
    def __init__(self) -> None:
        self._waiters: deque[Waiter] = deque()
        self._done: dict[str, list[Watch]] = {}
        # What the last claims found, so that an idle fleet's polls cost the database nothing:
        # every ``pending`` call counts as a change (``_version``), marking its workflow (or, for
        # None, every workflow) changed; a claim that came back short marks the workflows it
        # asked for as empty as of when it began. A fetch for workflows all empty since their
        # last change parks without claiming. Trusted only while every change reaches
        # ``pending``: on Postgres while the LISTEN connection is up (``signals_complete``).
        self.signals_complete = False
        self._version = 0
        self._changed_at: dict[str, int] = {}
        self._all_changed_at = 0
        self._empty_at: dict[str, int] = {}
        # Parked fetches that asked to end when a lease of their consumer ends, by consumer id:
        # looked up on every finish, so kept apart from the line (empty in most fleets).
        self._on_finish: dict[str, list[Waiter]] = {}
        self.closing = False

    # -- fetch side -----------------------------------------------------------------------
    def register(self, waiter: Waiter) -> Waiter:
        """Register *before* looking for work, so a signal that lands mid-claim is not lost."""
        self._waiters.append(waiter)
        if waiter.wake_on_finish:
            self._on_finish.setdefault(waiter.consumer_id, []).append(waiter)
        return waiter

    def close(self) -> None:
        """The server is shutting down, and uvicorn waits for every open response before it
        stops: parked fetches answer empty at once rather than at the end of their wait_s, and
        later ones do not park (see Queue.fetch)."""
        self.closing = True
        for waiter in self._waiters:
            waiter.replan()

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

    def looking(self) -> int:
        """Mark the start of a claim; pass the mark to ``looked``."""
        return self._version

    def looked(self, workflows: frozenset[str] | None, mark: int, short: bool) -> None:
        """A claim begun at ``mark`` for ``workflows`` found less than it asked for: nothing
        more of them was claimable then."""
        if short and workflows is not None:
            for workflow in workflows:
                self._empty_at[workflow] = mark

    def nothing_for(self, workflows: frozenset[str] | None) -> bool:
        """Whether a claim for ``workflows`` would find nothing: each was found empty after its
        last change. False whenever a change might have gone unseen."""
        if not self.signals_complete or workflows is None:
            return False
        empty_at, changed_at, floor = self._empty_at, self._changed_at, self._all_changed_at
        for workflow in workflows:
            empty = empty_at.get(workflow, -1)
            if empty < floor or empty < changed_at.get(workflow, 0):
                return False
        return True

    def unregister(self, waiter: Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
        if waiter.wake_on_finish:
            flagged = self._on_finish.get(waiter.consumer_id, [])
            if waiter in flagged:
                flagged.remove(waiter)
            if not flagged:
                self._on_finish.pop(waiter.consumer_id, None)

    def lease_ended(self, consumer_id: str | None) -> None:
        """A lease of ``consumer_id`` ended in this process (completed, failed or released):
        end its parked fetches that asked for it. Such a consumer left workflows out of its
        poll because its own tasks filled their model servers; one of them just freed a slot,
        and a poll that stayed open would keep those workflows waiting until it timed out."""
        if consumer_id is None or not self._on_finish:
            return
        for waiter in self._on_finish.get(consumer_id, ()):
            if waiter.parked_at is not None:
                waiter.replan()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def pending(self, workflow: str | None = None, count: int = 1) -> int:
        """``count`` tasks of ``workflow`` (None: unknown) became claimable; how many woke."""
        self._version += 1
        if workflow is None:
            self._all_changed_at = self._version
        else:
            self._changed_at[workflow] = self._version
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
    def watch(self, task_id: str) -> Watch:
        watch = Watch()
        self._done.setdefault(task_id, []).append(watch)
        return watch

    def unwatch(self, task_id: str, watch: Watch) -> None:
        watches = self._done.get(task_id)
        if watches and watch in watches:
            watches.remove(watch)
            if not watches:
                del self._done[task_id]

    def finished(self, task_id: str, row: Any = None) -> bool:
        """The task ended (``row``: its whole row, where the change that ended it has it);
        returns whether a /process caller was waiting on it."""
        watches = self._done.pop(task_id, [])
        for watch in watches:
            watch.row = row
            watch.event.set()
        return bool(watches)

    # -- Postgres NOTIFY --------------------------------------------------------------------
    def on_notify(self, channel: str, payload: str) -> None:
        if channel == "taskfleet_pending":
            self.pending(payload or None)
        elif channel == "taskfleet_done":
            self.finished(payload)
