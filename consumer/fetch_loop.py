"""What to lease and when: the capacity plan and the loop that long-polls the API by it.

Promises kept here:
- fetch only as many tasks as there are free slots *and* free healthy model-server capacity;
- after an outage released a task, fetching for that kind pauses: 1 s (or the server's
  Retry-After), doubling with each further outage up to ``outage_backoff_max_s``, back to 1 s once
  a task of the kind completes;
- an open long poll is never cancelled: what it brings is handed over (and released on stop);
- a fetch the API refuses for the token (401/403) ends the loop with ``TokenRefused``: the
  consumer stops instead of retrying what cannot succeed;
- completions of tasks that end within ``RIDE_S`` of their fetch ride on the next long poll
  (one request per task instead of two); any other goes out at once, as before;
- a workflow held back because other clients' calls fill its model servers is asked for again
  soon after the server's next /health check (``BUSY_RECHECK_S`` after the first, growing while
  it stays full): the long poll for the other workflows ends by then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import httpx

from consumer.attempts import Attempts, Running
from consumer.completions import CompletionBatcher
from consumer.errors import ModelServerUnavailable, TokenRefused
from consumer.metrics import Metrics
from consumer.model_client import ModelServerPool
from consumer.registry import Runnable
from taskfleet.client import ConsumerClient
from taskfleet.errors import Forbidden, TaskfleetError, Unauthorized

log = logging.getLogger("consumer")

# After a fetch brought tasks, the next long poll waits this long at most for them to end, so
# their completions go with it. A short task (echo, a cache hit) ends well within it; a long one
# only delays the next poll by it, and so the pickup of a task arriving in that moment.
RIDE_S = 0.002
# The shortest long poll while a workflow waits on others' calls to end (see BUSY_RECHECK_S).
MIN_POLL_S = 0.05


class Capacity:
    """Which workflows this consumer may lease now, and how many tasks: slots, model-server room, pauses."""

    def __init__(
        self,
        runnables: dict[str, Runnable],
        pools: dict[str, ModelServerPool],
        *,
        concurrency: int,
        outage_backoff_max_s: float,
    ) -> None:
        self.runnables = runnables
        self.pools = pools
        self.concurrency = concurrency
        self.outage_backoff_max_s = outage_backoff_max_s
        # Set when a slot frees, health answers were re-read, or on stop: the fetch loop plans again.
        self.changed = asyncio.Event()
        self._paused: dict[str, tuple[float, float]] = {}  # kind -> (paused until, last pause)
        # Set by ``plan``: a workflow was left out only because our own tasks fill its model
        # servers, so the end of one of our leases is when to ask for it again.
        self.held_by_ours = False
        # Set by ``plan``: seconds until a model server that other clients' calls fill, and that
        # holds back a workflow, is asked again (None: no workflow waits on such a server).
        self.recheck_in: float | None = None

    def plan(self, running: Mapping[str, Running]) -> tuple[list[str], int]:
        """Which workflows to ask for, and how many tasks at most, with ``running`` in flight."""
        self.held_by_ours = False
        self.recheck_in = None
        free = self.concurrency - len(running)
        if free <= 0:
            return [], 0
        now = time.monotonic()
        room: dict[str, int] = {}
        full_of_ours: set[str] = set()
        recheck: dict[str, float] = {}  # full kinds whose servers others' calls fill: their next check
        for kind, pool in self.pools.items():
            paused_until = self._paused.get(kind, (0.0, 0.0))[0]
            ours = sum(1 for r in running.values() if kind in r.runnable.model_servers)
            room[kind] = 0 if now < paused_until else pool.free_slots(ours)
            if room[kind] == 0 and ours and now >= paused_until:
                full_of_ours.add(kind)
            if room[kind] == 0 and (due := pool.busy_recheck_in()) is not None:
                recheck[kind] = due
        names: list[str] = []
        limit = free
        for name, r in self.runnables.items():
            if all(room[k] > 0 for k in r.model_servers):
                names.append(name)
                for k in r.model_servers:
                    # One fetch may return any mix of the named workflows, so the tightest kind caps it.
                    limit = min(limit, room[k])
            else:
                if any(k in full_of_ours for k in r.model_servers):
                    self.held_by_ours = True
                dues = [recheck[k] for k in r.model_servers if k in recheck]
                if dues:
                    self.recheck_in = min(dues if self.recheck_in is None else [self.recheck_in, *dues])
        return names, limit

    def pause(self, error: ModelServerUnavailable) -> float:
        kind = error.kind
        _, last = self._paused.get(kind, (0.0, 0.0))
        pause = min(self.outage_backoff_max_s, max(1.0, last * 2))
        if error.retry_after_s:
            pause = min(self.outage_backoff_max_s, max(pause, error.retry_after_s))
        self._paused[kind] = (time.monotonic() + pause, pause)
        return pause

    def resume(self, kind: str) -> None:
        self._paused.pop(kind, None)

    async def refresh_loop(self, every_s: float) -> None:
        """Re-read every model server's health, then let the fetch loop plan again; until cancelled.
        Sooner than ``every_s`` when a server full of others' calls is due to be asked again."""
        while True:
            await asyncio.gather(*(p.refresh() for p in self.pools.values()), return_exceptions=True)
            self.changed.set()
            busy = [t for p in self.pools.values() if (t := p.busy_recheck_in()) is not None]
            await asyncio.sleep(max(MIN_POLL_S, min([every_s, *busy])) if busy else every_s)


class FetchLoop:
    """Long-polls the API for what the plan allows and hands each task to ``Attempts``, until stopped."""

    def __init__(
        self,
        client: ConsumerClient,
        capacity: Capacity,
        attempts: Attempts,
        *,
        fetch_wait_s: float,
        metrics: Metrics,
        stopping: asyncio.Event,
    ) -> None:
        self.client = client
        self.capacity = capacity
        self.attempts = attempts
        self.fetch_wait_s = fetch_wait_s
        self.metrics = metrics
        self._stopping = stopping

    async def run(self) -> None:
        completions = self.attempts.completions
        riders: list = []
        try:
            await self._run(completions, riders)
        finally:
            # Completions no fetch will carry go on their own.
            completions.send_alone(riders + completions.take())

    async def _run(self, completions: CompletionBatcher, riders: list) -> None:
        capacity = self.capacity
        api_backoff = 0.0
        while not self._stopping.is_set():
            names, limit = capacity.plan(self.attempts.running)
            if not names:
                completions.send_alone(riders)
                riders.clear()
                capacity.changed.clear()
                waited = time.perf_counter()
                await _wait(capacity.changed, 1.0)
                self.metrics.slot_wait.inc(time.perf_counter() - waited)
                continue
            carried, riders[:] = list(riders), []
            try:
                # Not cancelled on stop: the API may have leased tasks to us already, and a response
                # dropped on the floor would leave them leased until expiry (and count an attempt).
                wait_s = self.fetch_wait_s
                if len(names) < len(capacity.runnables):
                    # Some workflows are held back (server down or full): poll briefly, so that
                    # they are asked for again soon after their capacity returns.
                    wait_s = min(wait_s, 1.0)
                if capacity.recheck_in is not None:
                    # Others' calls fill a server: ask again for what it holds back after its next check.
                    wait_s = min(wait_s, max(MIN_POLL_S, capacity.recheck_in + MIN_POLL_S))
                # Held back by our own tasks: the API ends the poll when one of them ends, so
                # that the slot it frees is asked for at once (not after up to a second).
                wake = capacity.held_by_ours
                if carried:
                    # The completions are committed before the API waits for our next tasks;
                    # their answers come back with those tasks.
                    items = [(item[0], item[1], item[2], item[5]) for item, _ in carried]
                    results, tasks = await asyncio.shield(self.client.complete_and_fetch(
                        items, names, limit=limit, wait_s=wait_s, wake_on_finish=wake))
                    completions.answer(carried, results)
                else:
                    tasks = await asyncio.shield(
                        self.client.fetch(names, limit=limit, wait_s=wait_s, wake_on_finish=wake))
                api_backoff = 0.0
            except (Unauthorized, Forbidden) as exc:
                completions.answer(carried, exc)
                raise TokenRefused(
                    f"the task API refused this consumer's token ({exc.status} {exc.code}: {exc.message}); "
                    "set TASKFLEET_CONSUMER_TOKEN to one of the API's TASKFLEET_CONSUMER_TOKENS"
                ) from None
            except (TaskfleetError, httpx.HTTPError) as exc:
                # Each carried completion's own retry sends it again (alone, or on a later fetch).
                completions.answer(carried, exc)
                api_backoff = min(max(api_backoff * 2, 0.5), 15.0)
                log.warning("fetch failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, api_backoff)
                await _wait(self._stopping, api_backoff)
                continue
            except BaseException:  # cancelled: whether the request landed is unknown; the fence sorts a resend
                completions.send_alone(carried)
                raise
            self.metrics.fetched.inc(len(tasks))
            for task in tasks:
                self.attempts.start(task)
            if tasks:
                # Let the new tasks run: those that end at once complete on the next long poll.
                completions.hold()
                await asyncio.sleep(0)
                await completions.wait_riders(len(tasks), RIDE_S)
                riders[:] = completions.take()


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
