"""Live task events: which streams watch which task, what wakes them, and the SSE stream itself.

A change this process makes is signalled by the queue (``Queue._signal_changed``), on both
backends, the moment it commits. Another replica's change reaches us another way: Postgres
NOTIFY carries only "claimable" and "finished for /process" (not progress, not a claim), so each
replica runs one low-rate recheck of the ``updated_at`` of every task it has streams on (one
statement for all of its streams, and only while some are open), never a poll per client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from task_api.store import Store
from taskfleet.errors import Unavailable
from taskfleet.states import TERMINAL

log = logging.getLogger("taskfleet.api.events")

KEEPALIVE_S = 15.0  # a comment line now and then, so proxies keep an idle stream open
GONE = ("gone",)  # the version of a watched task that is no longer there (retention removed it)


class TaskWatch:
    """One stream's interest in one task: set on every change of it (or of its stage tasks)."""

    __slots__ = ("task_id", "changed")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.changed = asyncio.Event()

    async def wait(self, timeout_s: float) -> bool:
        """True once the task changed, False after ``timeout_s`` without a change."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.changed.wait()
        except TimeoutError:
            return False
        return True


class TaskEvents:
    def __init__(self) -> None:
        self._watches: dict[str, set[TaskWatch]] = {}
        # Last version the recheck saw per watched task: its updated_at, and its stage tasks' latest.
        self._versions: dict[str, tuple[Any, Any]] = {}
        self.closing = False

    def close(self) -> None:
        """End every stream (they send nothing more and return): the server is shutting down,
        and it waits for open responses before it stops. EventSource clients reconnect, to
        another replica or to this one once it is back."""
        self.closing = True
        for watches in self._watches.values():
            for watch in watches:
                watch.changed.set()

    def watch(self, task_id: str) -> TaskWatch:
        watch = TaskWatch(task_id)
        self._watches.setdefault(task_id, set()).add(watch)
        return watch

    def unwatch(self, watch: TaskWatch) -> None:
        watches = self._watches.get(watch.task_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.task_id]
                self._versions.pop(watch.task_id, None)

    @property
    def streams(self) -> int:
        return sum(len(w) for w in self._watches.values())

    def changed(self, task_id: str | None) -> None:
        for watch in self._watches.get(task_id, ()) if task_id else ():
            watch.changed.set()

    async def recheck(self, store: Store) -> None:
        """Wake the streams of watched tasks whose row changed since the last look: another
        replica's change (a task first seen here wakes too: its stream re-reads once)."""
        if not self._watches:
            return
        ids = list(self._watches)
        versions = await store.task_versions(ids)
        for task_id in ids:
            # A removed task wakes its streams too: they read it once more, find nothing, and end.
            version = versions.get(task_id, GONE)
            if task_id in self._watches and self._versions.get(task_id) != version:
                self._versions[task_id] = version
                self.changed(task_id)

    async def recheck_forever(self, store: Store, interval_s: float) -> None:
        while True:
            try:
                await self.recheck(store)
            except Unavailable as exc:
                log.warning("event recheck skipped: %s", exc.message)
            except Exception:
                log.exception("event recheck failed")
            await asyncio.sleep(interval_s)


async def task_stream(
    events: TaskEvents,
    task_id: str,
    read: Callable[[str], Awaitable[dict[str, Any] | None]],
    keepalive_s: float = KEEPALIVE_S,
    max_s: float = 0.0,
) -> AsyncIterator[str]:
    """``event: task`` with the task's JSON now and after each change, until it is terminal
    (or, with ``max_s``, until the stream has been open that long: the client reconnects).

    ``read`` gives the task's current JSON (None once retention removed it). The watch is
    cleared before each read, so a change landing during the read is read again, not lost."""
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + max_s if max_s > 0 else float("inf")
    watch = events.watch(task_id)
    try:
        last = None
        while True:
            watch.changed.clear()
            if events.closing and last is not None:
                return
            body = await read(task_id)
            if body is None:
                return
            # A heartbeat that changed nothing but updated_at sends nothing.
            seen = {k: v for k, v in body.items() if k != "updated_at"}
            if seen != last:
                last = seen
                yield f"event: task\ndata: {json.dumps(body, separators=(',', ':'), ensure_ascii=False)}\n\n"
            if body["status"] in TERMINAL or events.closing:
                return
            left = ends_at - loop.time()
            if left <= 0:
                return
            if not await watch.wait(min(keepalive_s, left)) and loop.time() < ends_at:
                yield ": keep-alive\n\n"
    finally:
        events.unwatch(watch)
