"""The queue: every task operation, on either backend, through one manager.

It makes the decisions (retry backoff, which waiting fetch to wake or hand a task to, when to
poke the webhook sender) and asks its store for the rows: the statements both dialects share
by name from ``store/sql.py``, each state change whose shape differs by dialect through a
``Store`` method.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
import uuid
from collections import Counter
from typing import Any, Callable, Iterable

from task_api.events import TaskEvents
from task_api.producers import Producers
from task_api.settings import DEFAULT_PRODUCER
from task_api.pipeline_runs import Effects, PipelineRunner, stages_view
from task_api.store import Row, Store, sql
from task_api.wakeup import Dispatcher, Waiter
from taskfleet.coalesce import Coalescer
from taskfleet.errors import BadRequest, Conflict, LeaseLost, NotFound, TooManyRequests
from taskfleet.states import TERMINAL

log = logging.getLogger("taskfleet.api.tasks")

SYNC_PRIORITY = 1_000_000  # /process runs before anything a producer can ask for
# Retry-After of a create refused for a full pending quota: the backlog drains at the fleet's
# pace, which the API cannot know; a few seconds keeps a polite client from hammering.
QUOTA_RETRY_S = 5.0


def dumps(value: Any) -> str:
    # allow_nan=False: a NaN or Infinity stored would make every later answer about its task
    # (and every fetch that claims it) fail to encode; this refuses it before the write.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def backoff_s(attempts_done: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with full jitter in its upper half: base·2ⁿ, capped, × U(0.5, 1)."""
    ceiling = min(max_s, base_s * (2 ** max(0, attempts_done - 1)))
    return ceiling * random.uniform(0.5, 1.0)


class Queue:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        *,
        lease_s: float = 60.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 300.0,
        on_finished: Callable[[Row], None] | None = None,
        on_webhook: Callable[[], None] | None = None,
        pipelines: PipelineRunner | None = None,
        events: TaskEvents | None = None,
        producers: Producers | None = None,
    ) -> None:
        self.store = store
        self.producers = producers or Producers()
        self._dispatcher = dispatcher
        self.lease_s = lease_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._on_finished = on_finished or (lambda row: None)
        self._on_webhook = on_webhook or (lambda: None)
        self.pipelines = pipelines or PipelineRunner({}, {}, producers=self.producers)
        self.events = events or TaskEvents()
        self._creates: Coalescer[dict[str, Any], tuple[Row, bool]] = Coalescer(self._create_together)

    # -- signals ------------------------------------------------------------------------------
    # Changes made here wake this process's waiters directly, on both backends; on Postgres
    # the NOTIFY trigger tells the other replicas (the store drops our own, see store/postgres.py).
    def _signal_pending(self, workflow: str, count: int = 1) -> None:
        self._dispatcher.pending(workflow, count)

    @staticmethod
    def _log_change(row: Row, change: str, **context: Any) -> None:
        """One info line per state change, carrying the task id (and, from the context unless
        ``context`` overrides it, the request that made the change)."""
        if log.isEnabledFor(logging.INFO):
            extra = {"task_id": row["id"], "workflow": row.get("workflow"), "status": row["status"], **context}
            log.info("task %s: %s", change, row["status"], extra=extra)

    def _signal_changed(self, row: Row) -> None:
        """Wake the event streams on this task, and on its pipeline (whose stages it shows)."""
        self.events.changed(row["id"])
        self.events.changed(row.get("parent_id"))

    def _signal_finished(self, row: Row, *, whole: bool = False) -> bool:
        """``whole``: ``row`` has every column, and the /process callers answer from it. Returns
        whether such a caller was waiting on the task."""
        self._log_change(row, "ended")
        waited = self._dispatcher.finished(row["id"], row if whole else None)
        self._on_finished(row)
        if row.get("webhook_url"):
            self._on_webhook()
        return waited

    def _signal_effects(self, effects: Effects) -> None:
        """After a pipeline transaction's commit: wake fetches for its new and restarted stage
        tasks, and announce the pipeline's end."""
        fresh: dict[str, int] = {}
        for row in effects.created + effects.restarted:
            fresh[row["workflow"]] = fresh.get(row["workflow"], 0) + 1
            self._signal_changed(row)
        for workflow, count in fresh.items():
            self._signal_pending(workflow, count)
        if effects.ended is not None:
            self._signal_changed(effects.ended)
            self._signal_finished(effects.ended)

    def _signal_later(self, workflow: str, delay_s: float) -> None:
        # Backoff ends with no row change to NOTIFY about: wake our own waiters then (other
        # replicas pick it up on their periodic ready-check).
        asyncio.get_running_loop().call_later(max(0.0, delay_s), self._dispatcher.pending, workflow, 1)

    # -- producer side ----------------------------------------------------------------------
    async def create(self, **spec: Any) -> tuple[Row, bool]:
        """Insert a task; returns (row, created). A repeated key returns the first task.

        Creates that arrive while one is being written go together in the next write (one
        statement and one commit on Postgres); each is still committed before it returns.
        A pipeline goes in with its first stages' tasks, in one transaction of its own."""
        pipeline = self.pipelines.is_pipeline(spec["workflow"])
        params = self._insert_params(spec, time.time())
        if self.producers.limited(params["producer"]):
            await self._take_create_tokens([params])
            if params["producer"] in self.producers.max_pending:
                # The quota's count and the insert go in one locked transaction (create_many's).
                return (await self._create_many([params], tokens_taken=True))[0]
        result = await (self._create_pipeline(params) if pipeline else self._creates.submit(params))
        # Logged here, in the producer's request: the coalesced write runs in another's context.
        if result[1]:
            self._log_change(result[0], "created")
        # No yield here: the create's answer is written before the fetch it woke (or handed its
        # task to) runs. Letting that fetch go first put a serial producer's every create
        # behind a consumer's response, about half a millisecond more with consumers busy.
        return result

    async def create_many(self, specs: list[dict[str, Any]]) -> list[tuple[Row, bool]]:
        """Insert tasks in one transaction: all of them or none, an idempotency conflict
        included. Each spec holds workflow, input, priority, max_attempts, timeout_s,
        webhook_url, metadata, idempotency_key, body_hash and optionally notify_done."""
        now = time.time()
        return await self._create_many([self._insert_params(spec, now) for spec in specs])

    async def _create_many(self, params: list[dict[str, Any]], tokens_taken: bool = False) -> list[tuple[Row, bool]]:
        if not tokens_taken:
            await self._take_create_tokens(params)
        plain = [p for p in params if not self.pipelines.is_pipeline(p["workflow"])]
        effects = Effects()
        async with self.store.transaction() as tx:
            await self._check_quotas(tx, params)
            inserted = dict(zip((p["id"] for p in plain), await tx.insert_tasks(plain) if plain else []))
            results = []
            for p in params:
                if p["id"] in inserted:
                    results.append(await self._existing_or_new(tx, p, inserted[p["id"]]))
                else:
                    results.append(await self._insert_pipeline(tx, p, effects))
        self._signal_created([r for r, p in zip(results, params) if p["id"] in inserted])
        self._signal_effects(effects)
        for row, created in results:
            if created:
                self._log_change(row, "created")
        return results

    # -- producers' limits (CONTRACT §9) -------------------------------------------------------
    async def _take_create_tokens(self, params: list[dict[str, Any]]) -> None:
        """A rate-limited producer's creates take a token per task from its fleet-wide bucket
        (one second's worth at most); refused, the answer says when enough will be back."""
        counts = Counter(p["producer"] for p in params if p["producer"] in self.producers.rates)
        for producer, n in counts.items():
            rate = self.producers.rates[producer]
            capacity = max(1.0, rate)
            now = params[0]["now"]
            if await self.store.take_create_tokens(producer, n, rate, capacity, now) is None:
                held = await self.store.create_tokens_now(producer, rate, capacity, now)
                raise TooManyRequests(
                    f"producer {producer!r} is over its rate of {rate:g} creates/s",
                    retry_after_s=max(0.0, (min(n, capacity) - held) / rate),
                )

    async def _check_quotas(self, tx: Store, params: list[dict[str, Any]]) -> None:
        """Inside the create's transaction, under the producer's lock: its PENDING tasks and
        these may not pass its quota. Tasks that already exist under these idempotency keys are
        not new, so a resent create still gets its task back."""
        counts = Counter(p["producer"] for p in params if p["producer"] in self.producers.max_pending)
        for producer, n in counts.items():
            await tx.lock_producer(producer)
            limit = self.producers.max_pending[producer]
            pending = await tx.fetchval(sql.COUNT_PRODUCER_PENDING, {"producer": producer})
            if pending + n <= limit:
                continue
            for p in params:
                if p["producer"] == producer and p["idempotency_key"] is not None:
                    if await tx.fetchrow(sql.SELECT_BY_IDEMPOTENCY_KEY, {"key": p["idempotency_key"]}):
                        n -= 1
            if pending + n > limit:
                raise TooManyRequests(
                    f"producer {producer!r} has {pending} tasks pending; its quota is {limit}"
                    + (f" (this create adds {n})" if n > 1 else ""),
                    code="quota_exceeded", retry_after_s=QUOTA_RETRY_S,
                )

    async def _create_pipeline(self, p: dict[str, Any]) -> tuple[Row, bool]:
        effects = Effects()
        async with self.store.transaction() as tx:
            result = await self._insert_pipeline(tx, p, effects)
        self._signal_effects(effects)
        return result

    async def _insert_pipeline(self, tx: Store, p: dict[str, Any], effects: Effects) -> tuple[Row, bool]:
        """The pipeline task, PROCESSING at once, with its first stages' tasks (in ``tx``)."""
        row = await tx.fetchrow(sql.INSERT_PIPELINE_TASK, {**p, "pipeline_def": self.pipelines.snapshot(p["workflow"])})
        if row is None:
            return await self._existing_or_new(tx, p, None)
        await self.pipelines.settle(tx, row, p["now"], effects)
        if effects.ended is not None and effects.ended["id"] == row["id"]:
            return effects.ended, True
        return await tx.fetchrow(sql.SELECT_TASK, {"id": row["id"]}), True

    async def _create_together(self, params: list[dict[str, Any]]) -> list[tuple[Row, bool] | Exception]:
        """The coalescer's flush: independent creates, so one item's idempotency conflict is
        its own answer and does not undo the others."""
        handed = False
        if len(params) == 1:
            row, handed = await self._insert_one(params[0])
            inserted = [row]
        else:
            inserted = await self.store.insert_tasks_together(params)
        results: list[tuple[Row, bool] | Exception] = []
        for p, row in zip(params, inserted):
            try:
                results.append(await self._existing_or_new(self.store, p, row))
            except Conflict as exc:
                results.append(exc)
        if not handed:  # a handed task is already leased: nobody else needs waking for it
            self._signal_created([r for r in results if not isinstance(r, Exception)])
        return results

    async def _insert_one(self, p: dict[str, Any]) -> tuple[Row | None, bool]:
        """A lone create. If a fetch in this process is parked waiting for its workflow, the
        task is inserted already leased to that fetch's consumer and handed to it: the pickup
        then costs one statement, not an insert and a claim. A parked fetch means nothing was
        claimable for it when it last looked, so no older task is passed over.

        Returns the row for the create's answer, and whether it was handed over."""
        waiter = self._dispatcher.take(p["workflow"])
        if waiter is None:
            # One statement is its own transaction on both backends: no BEGIN/COMMIT round trips.
            return await self.store.insert_task(p), False
        leased = {**p, "lease_id": uuid.uuid4().hex, "consumer_id": waiter.consumer_id, "host": waiter.host,
                  "lease_s": self.lease_s}  # fmt: skip
        try:
            # The fetch gets the row as soon as its consumer may use it; this returns once the
            # task is as durable as any create (the store knows when that is on its database).
            row = await self.store.insert_leased_task(leased, waiter.hand)
        except BaseException:
            waiter.wake()  # it claims for itself instead (nothing happens if it was handed the row)
            raise
        if row is None:  # the idempotency key was taken: nothing new to hand over
            waiter.wake()
            return None, False
        # In the coalesced write's context, which may be another create's request: no request id.
        self._log_change(row, f"leased to {waiter.consumer_id}", request_id=None)
        # The producer's answer shows the task as it was accepted, PENDING, as every create
        # answers (the contract's create shape); a read a moment later shows it PROCESSING, as
        # it would after any fast claim.
        accepted = {**row, "status": "PENDING", "consumer_id": None, "lease_id": None,
                    "lease_expires_at": None, "started_at": None}  # fmt: skip
        return accepted, True

    def _insert_params(self, spec: dict[str, Any], now: float) -> dict[str, Any]:
        producer = spec.get("producer", DEFAULT_PRODUCER)
        return {
            "id": f"tsk_{uuid.uuid4().hex}",
            "workflow": spec["workflow"],
            "input": dumps(spec["input"]),
            "priority": spec["priority"],
            "max_attempts": spec["max_attempts"],
            "timeout_s": float(spec["timeout_s"]),
            "webhook_url": spec["webhook_url"],
            "metadata": dumps(spec["metadata"]),
            "idempotency_key": spec["idempotency_key"],
            "request_hash": spec["body_hash"],
            "notify_done": int(spec.get("notify_done", False)),
            "producer": producer,
            "fair_step": self.producers.fair_step(producer),
            # None: the task waits as long as it takes (no expires_in_s, no TASKFLEET_PENDING_TTL_S).
            "pending_ttl_s": spec.get("pending_ttl_s"),
            "rerun_of": spec.get("rerun_of"),
            "now": now,
        }

    @staticmethod
    async def _existing_or_new(db: Store, p: dict[str, Any], row: Row | None) -> tuple[Row, bool]:
        if row is not None:
            return row, True
        existing = await db.fetchrow(sql.SELECT_BY_IDEMPOTENCY_KEY, {"key": p["idempotency_key"]})
        if existing is None:  # the first task was purged by retention between the two reads
            raise Conflict("idempotency key was used by a task that no longer exists", code="idempotency_conflict")
        if existing["request_hash"] != p["request_hash"]:
            raise Conflict(
                f"idempotency key {p['idempotency_key']!r} already used with a different request",
                code="idempotency_conflict",
            )
        return existing, False

    def end_waits(self) -> None:
        """On SIGTERM: end the open event streams and the parked long polls, which the server
        would otherwise wait out (up to TASKFLEET_MAX_WAIT_S) before it stops."""
        self.events.close()
        self._dispatcher.close()

    async def aclose(self) -> None:
        await self._creates.aclose()

    def _signal_created(self, results: list[tuple[Row, bool]]) -> None:
        fresh: dict[str, int] = {}
        for row, created in results:
            if created:
                fresh[row["workflow"]] = fresh.get(row["workflow"], 0) + 1
        for workflow, count in fresh.items():
            self._signal_pending(workflow, count)

    async def get(self, task_id: str) -> Row:
        row = await self.store.fetchrow(sql.SELECT_TASK, {"id": task_id})
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return row

    async def history(self, task_id: str) -> list[Row]:
        return await self.store.fetch(sql.SELECT_ATTEMPTS, {"id": task_id})

    async def with_history(self, task_id: str) -> tuple[Row, list[Row]]:
        """The task and its attempts as of one moment. Read apart, a completion committed between
        the two reads showed an ended attempt on a task still PROCESSING (an events stream sent
        that torn view as a change). Every write to the attempts also writes the task row, so the
        task is read again after its history, and the pair again while it moved."""
        row = await self.get(task_id)
        for _ in range(5):  # a task heartbeating faster than three reads is still answered
            history = await self.history(task_id)
            again = await self.get(task_id)
            if again["updated_at"] == row["updated_at"]:
                break
            row = again
        return row, history

    async def list(
        self, *, status: str | None, workflow: str | None, limit: int, cursor: str | None,
        producer: str | None = None,
    ) -> tuple[list[Row], str | None]:
        try:
            after = int(cursor) if cursor else None
        except ValueError:
            raise BadRequest("cursor is not one this API issued", code="invalid_cursor") from None
        statement = sql.LIST_TASKS[status is not None, workflow is not None, after is not None, producer is not None]
        params = {"status": status, "workflow": workflow, "producer": producer, "cursor": after, "limit": limit + 1}
        rows = await self.store.fetch_custom_plan(statement, params)
        next_cursor = str(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return rows[:limit], next_cursor

    async def cancel(self, task_id: str) -> Row:
        params = {"id": task_id, "now": time.time(), "in_pipeline": False}
        row = await self.store.cancel(params)
        if row is None:
            row = await self._cancel_in_pipeline(params)  # signals what it ended itself
        elif row["status"] == "CANCELLED":
            self._signal_finished(row)
        else:
            self._log_change(row, "cancel requested")
        if row is None:
            current = await self.get(task_id)
            raise Conflict(f"task is {current['status']} and cannot be cancelled", code="invalid_state")
        self._signal_changed(row)
        return row

    async def _cancel_in_pipeline(self, params: dict[str, Any]) -> Row | None:
        """Cancel a pipeline (its unfinished stage tasks with it), or one of its stage tasks
        (which ends the pipeline CANCELLED once that task has ended)."""
        task_id, now = params["id"], params["now"]
        effects = Effects()
        async with self.store.pipeline_transaction(task_id) as (tx, pipeline):
            if pipeline is None:
                return None
            if pipeline["id"] == task_id:
                if pipeline["status"] != "PROCESSING":
                    return None
                error = {"code": "cancelled", "message": "cancelled while running"}
                await self.pipelines.end(tx, pipeline, "CANCELLED", now, error=error, effects=effects)
                row = effects.ended
            else:
                row = await tx.cancel({**params, "in_pipeline": True})
                if row is not None and row["status"] == "CANCELLED":
                    await self.pipelines.settle(tx, pipeline, now, effects)
        self._signal_effects(effects)
        return row

    async def retry(self, task_id: str) -> Row:
        row = await self.store.fetchrow(sql.RETRY, {"id": task_id, "now": time.time()})
        if row is None:
            row = await self._retry_pipeline(task_id)
            if row is not None:
                self._signal_changed(row)
                return row
            current = await self.get(task_id)
            if current["parent_id"] is not None:
                raise Conflict(
                    f"task is a stage of pipeline {current['parent_id']}: retry the pipeline", code="invalid_state"
                )
            raise Conflict(f"task is {current['status']}; only FAILED or CANCELLED tasks can be retried", code="invalid_state")
        self._log_change(row, "retried")
        self._signal_pending(row["workflow"])
        self._signal_changed(row)
        return row

    async def _retry_pipeline(self, task_id: str) -> Row | None:
        """A FAILED or CANCELLED pipeline runs again: its stage tasks that did not complete
        (same ids, attempts reset), then the stages not yet started. COMPLETED ones stay."""
        now = time.time()
        effects = Effects()
        async with self.store.pipeline_transaction(task_id) as (tx, pipeline):
            if pipeline is None or pipeline["id"] != task_id:
                return None
            row = await tx.fetchrow(sql.RETRY_PIPELINE, {"id": task_id, "now": now})
            if row is None:
                return None
            effects.restarted = await tx.fetch(sql.RETRY_STAGE_TASKS, {"id": task_id, "now": now})
            await tx.execute(sql.KEEP_STAGE_TASKS_RUNNING, {"id": task_id})
            await self.pipelines.settle(tx, row, now, effects)
            current = effects.ended or await tx.fetchrow(sql.SELECT_TASK, {"id": task_id})
        self._signal_effects(effects)
        return current

    async def set_priority(self, task_id: str, priority: int) -> Row:
        """A PENDING task's new priority, which the next claim orders by; 409 for any other state."""
        current = await self.get(task_id)
        row = None
        if current["status"] == "PENDING":
            row = await self.store.set_priority({
                "id": task_id, "priority": priority, "producer": current["producer"],
                "fair_step": self.producers.fair_step(current["producer"]), "now": time.time(),
            })  # fmt: skip
        if row is None:
            current = await self.get(task_id)
            raise Conflict(f"task is {current['status']}; only a PENDING task's priority can change", code="not_pending")
        self._log_change(row, f"priority set to {priority}")
        self._signal_changed(row)
        return row

    async def _in_pipeline(self, task_id: str, change: Callable[[Store], Any], now: float) -> Row | None:
        """Run a stage task's state change in its pipeline's transaction; if the task ends
        there, the pipeline moves on (next stage, or its own end) in the same commit. None
        where the change matched nothing. A task of no pipeline (a plain task whose fence
        failed, or a stage task whose pipeline retention already removed) gets the change alone."""
        effects = Effects()
        async with self.store.pipeline_transaction(task_id) as (tx, pipeline):
            if pipeline is not None and pipeline["id"] == task_id:
                return None  # the pipeline task itself holds no lease to end
            row = await change(tx)
            if pipeline is not None and row is not None and row["status"] in TERMINAL:
                await self.pipelines.settle(tx, pipeline, now, effects)
        self._signal_effects(effects)
        return row

    async def stages(self, row: Row) -> list[dict[str, Any]] | None:
        """A pipeline's stages view (None for any other task)."""
        if not self.pipelines.is_pipeline(row["workflow"]):
            return None
        return await stages_view(self.store, row["id"])

    async def wait_finished(self, task_id: str, wait_s: float) -> Row:
        """Wait for a task to reach a terminal state, up to ``wait_s``; returns its latest row."""
        deadline = time.monotonic() + wait_s
        watch = self._dispatcher.watch(task_id)
        try:
            while True:
                row = await self.get(task_id)
                remaining = deadline - time.monotonic()
                if row["status"] in TERMINAL or remaining <= 0:
                    return row
                # The signal is the fast path; the periodic re-read covers a missed NOTIFY.
                # (asyncio.timeout, not wait_for: no task of its own, so the answer goes out a
                # loop turn sooner once the signal comes.)
                try:
                    async with asyncio.timeout(min(remaining, 5.0)):
                        await watch.event.wait()
                except TimeoutError:
                    pass
                if watch.row is not None:
                    return watch.row  # ended here: the change's own row, no second read
                watch.event.clear()
        finally:
            self._dispatcher.unwatch(task_id, watch)

    # -- consumer side -------------------------------------------------------------------------
    async def claim(
        self, workflows: Iterable[str] | None, *, consumer_id: str, host: str | None, limit: int
    ) -> list[Row]:
        names = sorted(set(workflows or ()))
        params = {
            "now": time.time(),
            "lease_s": self.lease_s,
            "consumer_id": consumer_id,
            "host": host,
            "limit": limit,
            "any_workflow": not names,
        }
        rows = await self.store.claim(params, names)
        for row in rows:
            self._log_change(row, f"leased to {consumer_id}")
            self._signal_changed(row)
        return rows

    async def fetch(
        self,
        workflows: Iterable[str] | None,
        *,
        consumer_id: str,
        host: str | None,
        limit: int,
        wait_s: float,
        gone: Callable[[], bool] | None = None,
        wake_on_finish: bool = False,
    ) -> list[Row]:
        """Claim up to ``limit`` tasks, waiting up to ``wait_s`` for some to appear. While it
        waits, a create in this process may lease its new task to it directly (see create).
        With ``wake_on_finish``, a lease of ``consumer_id`` ending in this process ends the wait
        early, empty-handed."""
        names = frozenset(workflows or ()) or None
        deadline = time.monotonic() + wait_s
        while True:
            waiter = self._dispatcher.register(Waiter(names, consumer_id, host, gone, wake_on_finish))
            try:
                # An idle fleet's polls park without a statement each (see Dispatcher.nothing_for).
                if self._dispatcher.nothing_for(names):
                    rows = []
                else:
                    mark = self._dispatcher.looking()
                    rows = await self.claim(names, consumer_id=consumer_id, host=host, limit=limit)
                    self._dispatcher.looked(names, mark, len(rows) < limit)
                if rows:
                    if waiter.is_woken or len(rows) == limit:
                        # We consumed a wake meant for someone, or there may be more: pass it on.
                        self._dispatcher.pending(rows[-1]["workflow"])
                    return rows
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._dispatcher.closing:
                    return []
                waiter.park()
                try:
                    async with asyncio.timeout(remaining):
                        await waiter.woken
                except TimeoutError:
                    # A hand-off can land in the same loop step as the deadline: keep it.
                    return [waiter.handed] if waiter.handed is not None else []
                if waiter.handed is not None:
                    return [waiter.handed]
                if waiter.replanning:
                    return []
                if gone is not None and gone():
                    # The consumer hung up: claim nothing for it, and hand the wake to another.
                    self._dispatcher.pending(None)
                    return []
            finally:
                self._dispatcher.unregister(waiter)

    async def _fenced_miss(self, task_id: str) -> LeaseLost:
        row = await self.store.fetchrow(sql.SELECT_TASK, {"id": task_id})
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return LeaseLost(f"lease is no longer current for task {task_id} (task is {row['status']})")

    async def heartbeat(self, task_id: str, lease_id: str, progress: dict[str, Any] | None) -> dict[str, Any]:
        """The lease's new expiry (now, where a waiting cancel ended it), whether a cancel
        ended it, and the task's workflow."""
        now = time.time()
        params = {
            "id": task_id,
            "lease_id": lease_id,
            "now": now,
            "lease_s": self.lease_s,
            "progress": dumps(progress) if progress is not None else None,
        }
        row = await self.store.fetchrow(sql.HEARTBEAT, params)
        if row is None:
            raise await self._fenced_miss(task_id)
        if progress is not None:
            self.events.changed(task_id)
        if row["cancel_requested"]:
            # The holder learns of the cancel now, and the task ends CANCELLED: its lease is
            # over, so whatever the holder writes afterwards is fenced off.
            await self._finish(
                task_id, lease_id, outcome="cancelled", status="CANCELLED",
                output=None, error={"code": "cancelled", "message": "cancelled while running"},
            )
            return {"lease_expires_at": now, "cancel_requested": True, "workflow": row["workflow"]}
        return {"lease_expires_at": row["lease_expires_at"], "cancel_requested": False, "workflow": row["workflow"]}

    def _finish_params(
        self,
        task_id: str,
        lease_id: str,
        *,
        outcome: str,
        status: str,
        output: Any,
        error: dict[str, Any] | None,
        retryable: bool = False,
        not_before: float | None = None,
        compute_s: float = 0.0,
    ) -> dict[str, Any]:
        now = time.time()
        return {
            "id": task_id,
            "lease_id": lease_id,
            "now": now,
            "outcome": outcome,
            "status": status,
            "output": dumps(output) if output is not None else None,
            "error": dumps(error) if error is not None else None,
            "retryable": retryable,
            "not_before": not_before if not_before is not None else now,
            "in_pipeline": False,
            "compute_s": float(compute_s),
        }

    def _after_finish(self, row: Row, params: dict[str, Any]) -> bool:
        """Signal an ended attempt; returns whether a /process caller waited on its task."""
        waited = False
        self._signal_changed(row)
        if row["status"] in TERMINAL:
            waited = self._signal_finished(row, whole=True)
        elif row["status"] == "PENDING":
            self._log_change(row, f"attempt {params['outcome']}, retry in {params['not_before'] - params['now']:.1f}s")
            self._signal_later(row["workflow"], params["not_before"] - params["now"])
        # After the /process caller's wake-up: the consumer's poll it ends answers empty, and
        # that answer written first put itself before the caller's (about 0.2 ms).
        self._dispatcher.lease_ended(row.get("consumer_id"))
        return waited

    @staticmethod
    async def _caller_first() -> None:
        """A /process caller waits on a task just ended: its answer goes out before the
        consumer's (the consumer's is on nobody's way; the caller's is what it waits for)."""
        await asyncio.sleep(0)

    async def _finish(self, task_id: str, lease_id: str, **kwargs: Any) -> Row:
        params = self._finish_params(task_id, lease_id, **kwargs)
        row = await self.store.finish(params)
        if row is None:
            row = await self._finish_in_pipeline(params)
        if row is None:
            raise await self._fenced_miss(task_id)
        if self._after_finish(row, params):
            await self._caller_first()
        return row

    async def _finish_in_pipeline(self, params: dict[str, Any]) -> Row | None:
        staged = {**params, "in_pipeline": True}
        return await self._in_pipeline(params["id"], lambda tx: tx.finish(staged), params["now"])

    async def _complete_in_pipelines(self, all_params: list[dict[str, Any]]) -> list[Row | None]:
        """Complete stage tasks of a batch, siblings together: one transaction per pipeline
        (its lock taken once, the pipeline settled once after all of them), one after another,
        so no transaction holds two pipelines' locks. None for a lease fenced off."""
        groups: dict[str, list[int]] = {}
        for i, params in enumerate(all_params):
            parent_id = await self.store.fetchval(sql.PARENT_OF, {"id": params["id"]})
            if parent_id is not None:  # else a plain task whose fence failed
                groups.setdefault(parent_id, []).append(i)
        rows: list[Row | None] = [None] * len(all_params)
        for members in groups.values():
            effects = Effects()
            first = all_params[members[0]]
            async with self.store.pipeline_transaction(first["id"]) as (tx, pipeline):
                for i in members:
                    rows[i] = await tx.finish({**all_params[i], "in_pipeline": True})
                if pipeline is not None and any(rows[i] is not None for i in members):
                    await self.pipelines.settle(tx, pipeline, first["now"], effects)
            self._signal_effects(effects)
        return rows

    async def complete_many(self, items: list[tuple[str, str, Any, float]]) -> list[Row | Exception]:
        """Complete several leases in one transaction; each is fenced on its own (a lost lease
        is reported for that item and changes nothing, the others still complete). An item is
        (task_id, lease_id, output, the attempt's compute seconds)."""
        all_params = [
            self._finish_params(
                task_id, lease_id, outcome="completed", status="COMPLETED", output=output, error=None, compute_s=compute_s
            )
            for task_id, lease_id, output, compute_s in items
        ]
        rows = await self.store.complete_many(all_params)
        missed = [i for i, row in enumerate(rows) if row is None]
        if missed:  # stage tasks (and fenced leases): each pipeline's in one transaction
            staged = await self._complete_in_pipelines([all_params[i] for i in missed])
            for i, row in zip(missed, staged):
                rows[i] = row
        results: list[Row | Exception] = []
        waited = False
        for params, row in zip(all_params, rows):
            if row is None:
                try:
                    results.append(await self._fenced_miss(params["id"]))
                except NotFound as exc:
                    results.append(exc)
                continue
            waited |= self._after_finish(row, params)
            results.append(row)
        if waited:
            await self._caller_first()
        return results

    async def complete(self, task_id: str, lease_id: str, output: Any, compute_s: float = 0.0) -> Row:
        return await self._finish(
            task_id, lease_id, outcome="completed", status="COMPLETED", output=output, error=None, compute_s=compute_s
        )

    async def fail(
        self,
        task_id: str,
        lease_id: str,
        *,
        error: dict[str, Any],
        retryable: bool,
        retry_after_s: float | None,
        compute_s: float = 0.0,
    ) -> Row:
        not_before = None
        if retryable:
            current = await self.store.fetchrow(sql.SELECT_TASK, {"id": task_id})
            done = (current["attempts"] if current else 0) + 1
            delay = retry_after_s if retry_after_s is not None else backoff_s(done, self.backoff_base_s, self.backoff_max_s)
            not_before = time.time() + delay
        return await self._finish(
            task_id, lease_id, outcome="failed", status="FAILED", output=None, error=error,
            retryable=retryable, not_before=not_before, compute_s=compute_s,
        )

    async def release(self, task_id: str, lease_id: str) -> Row:
        params = {"id": task_id, "lease_id": lease_id, "now": time.time(), "outcome": "released", "error": None,
                  "in_pipeline": False}  # fmt: skip
        row = await self.store.release(params)
        if row is None:
            staged = {**params, "in_pipeline": True}
            row = await self._in_pipeline(task_id, lambda tx: tx.release(staged), params["now"])
        if row is None:
            raise await self._fenced_miss(task_id)
        self._signal_changed(row)
        self._dispatcher.lease_ended(row.get("consumer_id"))
        if row["status"] == "PENDING":
            self._log_change(row, "released")
            self._signal_pending(row["workflow"])
        else:
            self._signal_finished(row)
        return row

    # -- housekeeping -----------------------------------------------------------------------
    async def expire(self) -> list[Row]:
        """End every lease past its expiry or its attempt's timeout; returns the moved tasks."""
        now = time.time()
        moved = await self.store.expire(now)
        for due in await self.store.fetch(sql.SELECT_EXPIRED_STAGE_TASKS, {"now": now}):
            params = {"id": due["id"], "lease_id": due["lease_id"], "outcome": due["outcome"], "now": now}
            row = await self._in_pipeline(due["id"], lambda tx, p=params: tx.expire_one(p), now)
            if row is not None:
                moved.append(row)
        for row in moved:
            self._signal_changed(row)
            if row["status"] == "PENDING":
                self._log_change(row, "lease expired")
                self._signal_pending(row["workflow"])
            else:
                full = await self.store.fetchrow(sql.SELECT_TASK, {"id": row["id"]})
                if full is not None:
                    self._signal_finished(full)
        return moved

    async def expire_pending(self) -> list[Row]:
        """End every task still PENDING past its expires_at FAILED ``expired`` (a stage task
        in its pipeline's transaction, which then ends the pipeline); returns the ended tasks."""
        now = time.time()
        ended = await self.store.expire_pending(now)
        for due in await self.store.fetch(sql.SELECT_EXPIRED_PENDING_STAGE_TASKS, {"now": now}):
            params = {"id": due["id"], "now": now}
            row = await self._in_pipeline(due["id"], lambda tx, p=params: tx.expire_pending_one(p), now)
            if row is not None:
                ended.append(row)
        for row in ended:
            self._signal_changed(row)
            self._signal_finished(row)
        return ended

    async def wake_ready(self) -> None:
        """Wake parked fetches for claimable tasks no signal announced: a backoff that ended,
        a lost NOTIFY."""
        if self._dispatcher.waiting:
            for workflow in await self.ready_workflows():
                self._dispatcher.pending(workflow)

    async def ready_workflows(self) -> list[str]:
        return [r["workflow"] for r in await self.store.fetch(sql.READY_WORKFLOWS, {"now": time.time()})]

    async def purge_finished(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        total = 0
        while True:
            n = await self.store.execute(sql.PURGE_FINISHED, {"cutoff": cutoff})
            total += n
            if n < 1000:
                return total
            await asyncio.sleep(0)  # let requests through between batches

    async def usage(self, group_by: str, since: float, until: float) -> list[dict[str, Any]]:
        """Compute seconds of the attempts that ended in [since, until), by ``group_by``."""
        rows = await self.store.fetch(sql.USAGE_BY[group_by], {"since": since, "until": until})
        return [
            {"key": r["key"], "compute_s": round(float(r["compute_s"]), 6), "attempts": r["attempts"], "tasks": r["tasks"]}
            for r in rows
        ]

    async def ping(self) -> None:
        """Raises unless the database answers."""
        await self.store.ping()

    async def stats(self) -> dict[str, Any]:
        counts = await self.store.fetch(sql.COUNT_BY_WORKFLOW_STATUS)
        oldest = await self.store.fetch(sql.OLDEST_PENDING_BY_WORKFLOW)
        now = time.time()
        return {
            "counts": [(r["workflow"], r["status"], r["n"]) for r in counts],
            "oldest_pending_age_s": {r["workflow"]: max(0.0, now - r["oldest"]) for r in oldest},
        }
