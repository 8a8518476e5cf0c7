"""The ``Store`` interface: what the queue and the webhook sender ask of a database.

A store is a connection (SQLite's one, or a Postgres pool) with plain statement calls for the
statements both dialects share, and one method for each state change whose shape differs:
SQLite runs several statements in one ``BEGIN IMMEDIATE`` transaction on the event loop's
thread, Postgres one statement with data-modifying CTEs, one round trip. The statements are in
``sql.py``; the decisions (backoff, wake-ups, webhook pokes) stay with the caller.
"""

from __future__ import annotations

import abc
import json
from contextlib import AbstractAsyncContextManager
from importlib import resources
from typing import Any, Callable, Iterable

from task_api.store import sql

Row = dict[str, Any]
Listener = Callable[[str, str], None]  # (channel, payload)


def migrations(dialect: str) -> list[tuple[int, str]]:
    folder = resources.files("task_api") / "migrations" / dialect
    found = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(found)


class Store(abc.ABC):
    """Parameters are the ``:name`` dicts of ``sql.py``, built by the caller."""

    dialect: str

    # -- connection -----------------------------------------------------------------------
    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection(s) and bring the schema up to date."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def listen(self, listener: Listener, connected: Callable[[bool], None] | None = None) -> None:
        """Call ``listener(channel, payload)`` for changes other processes made. The triggers
        NOTIFY ``taskfleet_pending`` (a workflow's task became claimable) and ``taskfleet_done``
        (a task finished); the caller has already signalled the changes it made itself.
        ``connected(up)`` hears when the listening connection is lost and when it is back (it
        reconnects by itself; meanwhile only the caller's periodic re-check finds such work)."""

    @abc.abstractmethod
    async def ping(self) -> None: ...

    # -- statements both dialects share ---------------------------------------------------------
    @abc.abstractmethod
    async def fetch(self, query: str, params: dict[str, Any] | None = None) -> list[Row]: ...

    async def fetch_custom_plan(self, query: str, params: dict[str, Any] | None = None) -> list[Row]:
        """``fetch``, planned for these very values on every call: for a statement whose best
        index depends on them (the filtered task list). SQLite plans each call already."""
        return await self.fetch(query, params)

    @abc.abstractmethod
    async def fetchrow(self, query: str, params: dict[str, Any] | None = None) -> Row | None: ...

    @abc.abstractmethod
    async def fetchval(self, query: str, params: dict[str, Any] | None = None) -> Any: ...

    @abc.abstractmethod
    async def execute(self, query: str, params: dict[str, Any] | None = None) -> int:
        """Run a statement; the number of rows it touched."""

    @abc.abstractmethod
    async def executemany(self, query: str, rows: Iterable[dict[str, Any]]) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Store]:
        """The statements run on the store it yields commit together, or not at all."""

    # -- producers' limits --------------------------------------------------------------------
    @abc.abstractmethod
    async def take_create_tokens(self, producer: str, n: int, rate: float, capacity: float, now: float) -> float | None:
        """Take ``n`` create tokens from the producer's fleet-wide bucket (sql.TAKE_CREATE_TOKENS_*):
        None when refused, else what the bucket holds after."""

    @abc.abstractmethod
    async def create_tokens_now(self, producer: str, rate: float, capacity: float, now: float) -> float: ...

    async def lock_producer(self, producer: str) -> None:
        """Inside a transaction: hold the producer's lock until it ends (its quota check and
        insert). A no-op where the transaction already excludes other writers."""

    # -- state changes, one shape per dialect -----------------------------------------------
    @abc.abstractmethod
    async def insert_tasks(self, params: list[dict[str, Any]]) -> list[Row | None]:
        """Insert PENDING tasks on this store (inside the caller's transaction, if any): each
        task's new row, or None where its idempotency key was already taken."""

    @abc.abstractmethod
    async def insert_task(self, params: dict[str, Any]) -> Row | None:
        """Insert one PENDING task, one statement (its own transaction outside one): its new
        row, or None where its idempotency key was already taken."""

    @abc.abstractmethod
    async def set_priority(self, params: dict[str, Any]) -> Row | None:
        """A PENDING task's new priority and its place in that priority's line (sql.SET_PRIORITY_*):
        its row, or None where it is not PENDING. ``params``: id, priority, producer, fair_step, now."""

    @abc.abstractmethod
    async def insert_tasks_together(self, params: list[dict[str, Any]]) -> list[Row | None]:
        """As ``insert_tasks``, all in one commit (group commit); a taken key skips its own
        row only."""

    @abc.abstractmethod
    async def insert_leased_task(self, params: dict[str, Any], hand: Callable[[Row], None]) -> Row | None:
        """Insert a task already leased to ``params["consumer_id"]``, with its attempt, as a
        claim would have left it. ``hand(row)`` is called as soon as the consumer may use the
        row; the call returns once the task is as durable as any create. None (and no hand)
        where the idempotency key was taken."""

    @abc.abstractmethod
    async def claim(self, params: dict[str, Any], workflows: list[str]) -> list[Row]:
        """Lease up to ``params["limit"]`` claimable tasks of ``workflows`` (all, where
        ``params["any_workflow"]``) and record each attempt; highest priority, oldest first."""

    @abc.abstractmethod
    async def finish(self, params: dict[str, Any]) -> Row | None:
        """End one lease (complete, fail, cancel at heartbeat) under the fence: the task's new
        row, its attempt ended and its webhook queued if it is now terminal; None if fenced."""

    @abc.abstractmethod
    async def complete_many(self, all_params: list[dict[str, Any]]) -> list[Row | None]:
        """``finish`` for several completions in one commit, each under its own fence: a row
        per item, None for one fenced off (a lease listed twice ends once)."""

    @abc.abstractmethod
    async def cancel(self, params: dict[str, Any]) -> Row | None:
        """PENDING → CANCELLED (webhook queued), PROCESSING → cancel requested; None for a
        task in any other state."""

    @abc.abstractmethod
    async def release(self, params: dict[str, Any]) -> Row | None:
        """Give a lease back without counting the attempt (CANCELLED if a cancel was waiting);
        None if fenced."""

    @abc.abstractmethod
    async def expire(self, now: float) -> list[Row]:
        """End leases past their expiry or their attempt's timeout (a batch of them): the moved
        tasks' id, workflow, status and error."""

    @abc.abstractmethod
    async def expire_pending(self, now: float) -> list[Row]:
        """End PENDING tasks (not stage tasks) past their expires_at FAILED ``expired`` (a batch
        of them), their webhooks queued in the same commit: the ended tasks' rows."""

    @abc.abstractmethod
    async def expire_pending_one(self, params: dict[str, Any]) -> Row | None:
        """``expire_pending`` for one stage task (``params``: id, now) inside the caller's
        pipeline transaction; None if it is no longer PENDING past its deadline."""

    # -- pipelines --------------------------------------------------------------------------
    @abc.abstractmethod
    def pipeline_transaction(self, task_id: str) -> AbstractAsyncContextManager[tuple[Store, Row | None]]:
        """A transaction holding the pipeline that ``task_id`` is a stage task of (or is): yields
        the store to run its statements on and the pipeline's row (with ``pipeline_def`` and
        ``stages_started``), None where the task belongs to no pipeline. While it is held, no
        other transaction changes that pipeline or starts its stages, on any replica."""

    @abc.abstractmethod
    async def insert_stage_tasks(self, params: list[dict[str, Any]]) -> list[Row]:
        """Insert a stage's PENDING tasks (inside the caller's transaction), in the order given."""

    @abc.abstractmethod
    async def expire_one(self, params: dict[str, Any]) -> Row | None:
        """End one expired lease (``params``: id, lease_id, outcome, now) as ``expire`` does,
        inside the caller's transaction: its id, workflow, status and error; None if it was no
        longer expirable."""

    @abc.abstractmethod
    async def claim_webhooks(self, params: dict[str, Any]) -> list[Row]:
        """Take up to ``params["limit"]`` due webhook deliveries, pushing their next_at past
        ``params["inflight_s"]`` so no other sender takes them meanwhile."""

    # -- reads whose parameters differ by dialect ------------------------------------------------
    async def task_versions(self, ids: list[str]) -> dict[str, tuple[Any, Any]]:
        """For each of ``ids`` that exists: (its updated_at, its stage tasks' latest updated_at)."""
        if self.dialect == "postgres":
            rows = await self.fetch(sql.TASK_VERSIONS_POSTGRES, {"ids": ids})
        else:
            rows = await self.fetch(sql.TASK_VERSIONS_SQLITE, {"ids": json.dumps(ids)})
        versions: dict[str, tuple[Any, Any]] = {}
        for row in rows:
            own, stages = versions.get(row["id"], (None, None))
            if row["stages_at"] is None:
                own = row["updated_at"]
            else:
                stages = row["stages_at"]
            versions[row["id"]] = (own, stages)
        return versions
