"""The SQLite store: one connection inside the event loop thread.

Its statements take tens of microseconds in WAL mode, far less than a hop to a worker thread
would, and a single writer needs no locking of its own: each multi-statement state change is
one ``BEGIN IMMEDIATE`` transaction that nothing else on the loop can interleave with.
``synchronous=NORMAL`` in WAL mode keeps every commit across a process crash (SIGKILL); only a
power cut can lose the last commits. WAL checkpoints (copying the log into the database file,
with an fsync) run in a worker thread on a connection of their own, not inside whichever commit
on the event loop crossed SQLite's threshold: there they stalled the loop for several
milliseconds every few hundred commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

from task_api.store import sql
from task_api.store.faults import SQLITE_GUARD
from task_api.store.base import Listener, Row, Store, migrations
from taskfleet.states import TERMINAL

log = logging.getLogger("taskfleet.api.db")


class SqliteStore(Store):
    dialect = "sqlite"
    CHECKPOINT_EVERY_S = 0.25

    def __init__(self, url: str) -> None:
        path = url.removeprefix("sqlite://").removeprefix("/") if url != "sqlite://:memory:" else ":memory:"
        if url.startswith("sqlite:////"):
            path = "/" + url.removeprefix("sqlite:////")
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._checkpoints: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    async def connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        self._migrate()
        if self.path != ":memory:":
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it instead
            self._stop_checkpoints.clear()
            self._checkpoints = threading.Thread(target=self._checkpoint_until_stopped, name="sqlite-checkpoint", daemon=True)
            self._checkpoints.start()

    def _checkpoint_until_stopped(self) -> None:
        # PASSIVE: copies what it can without waiting for, or blocking, the loop's writes; the
        # next write after a complete pass starts the log from the top again.
        checkpointer = sqlite3.connect(self.path, isolation_level=None)
        try:
            while not self._stop_checkpoints.wait(self.CHECKPOINT_EVERY_S):
                try:
                    checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next pass tries again
                    log.warning("sqlite checkpoint failed: %s", exc)
        finally:
            checkpointer.close()

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, text in migrations(self.dialect):
            if version in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split(text):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("sqlite schema migrated to version %s", version)

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._stop_checkpoints.set()
            await asyncio.to_thread(self._checkpoints.join)  # a pass under way ends first
            self._checkpoints = None
        if self._conn is not None:
            self._conn.close()  # the last connection to close checkpoints what is left
            self._conn = None

    # Every call runs under SQLITE_GUARD: a full disk or a locked file answers 503 (faults.py).
    async def fetch(self, query: str, params: dict[str, Any] | None = None) -> list[Row]:
        with SQLITE_GUARD:
            return [dict(r) for r in self._conn.execute(query, params or {})]

    async def fetchrow(self, query: str, params: dict[str, Any] | None = None) -> Row | None:
        with SQLITE_GUARD:
            row = self._conn.execute(query, params or {}).fetchone()
        return dict(row) if row is not None else None

    async def fetchval(self, query: str, params: dict[str, Any] | None = None) -> Any:
        with SQLITE_GUARD:
            row = self._conn.execute(query, params or {}).fetchone()
        return None if row is None else row[0]

    async def execute(self, query: str, params: dict[str, Any] | None = None) -> int:
        with SQLITE_GUARD:
            return self._conn.execute(query, params or {}).rowcount

    async def executemany(self, query: str, rows: Iterable[dict[str, Any]]) -> None:
        with SQLITE_GUARD:
            self._conn.executemany(query, list(rows))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator["SqliteStore"]:
        # Nothing in here may await something that suspends: the transaction is only atomic
        # because no other coroutine runs until COMMIT. Inside one already open (a state change
        # run in a pipeline's transaction) the statements simply join it.
        if self._conn.in_transaction:
            yield self
            return
        with SQLITE_GUARD:
            self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._rollback()
            raise
        try:
            with SQLITE_GUARD:
                self._conn.execute("COMMIT")
        except BaseException:
            # A COMMIT refused (disk full, busy) leaves the transaction open: end it, so that the
            # next statement does not join a half-done one; nothing of it was committed.
            self._rollback()
            raise

    def _rollback(self) -> None:
        # SQLite may have rolled back by itself (SQLITE_FULL does in some cases); a second
        # ROLLBACK would raise over the error that matters.
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("sqlite rollback failed: %s", exc)

    async def listen(self, listener: Listener, connected: Callable[[bool], None] | None = None) -> None:
        """One process owns the file: the queue signals its waiters directly."""

    async def ping(self) -> None:
        with SQLITE_GUARD:
            self._conn.execute("SELECT 1").fetchone()

    # -- state changes: each one transaction of several statements ----------------------------
    async def take_create_tokens(self, producer: str, n: int, rate: float, capacity: float, now: float) -> float | None:
        return await self.fetchval(
            sql.TAKE_CREATE_TOKENS_SQLITE, {"producer": producer, "n": n, "rate": rate, "capacity": capacity, "now": now}
        )

    async def create_tokens_now(self, producer: str, rate: float, capacity: float, now: float) -> float:
        value = await self.fetchval(sql.CREATE_TOKENS_NOW_SQLITE, {"producer": producer, "rate": rate, "capacity": capacity, "now": now})
        return capacity if value is None else float(value)

    async def insert_tasks(self, params: list[dict[str, Any]]) -> list[Row | None]:
        # In-process: a statement per row costs no round trip.
        return [await self.fetchrow(sql.INSERT_TASK_SQLITE, p) for p in params]

    async def set_priority(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.SET_PRIORITY_SQLITE, params)

    async def insert_task(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.INSERT_TASK_SQLITE, params)

    async def insert_tasks_together(self, params: list[dict[str, Any]]) -> list[Row | None]:
        async with self.transaction() as tx:
            # One after another in one transaction: each row's fair-share key sees the ones before.
            return [await tx.fetchrow(sql.INSERT_TASK_SQLITE, p) for p in params]

    async def insert_leased_task(self, params: dict[str, Any], hand: Callable[[Row], None]) -> Row | None:
        async with self.transaction() as tx:
            row = await tx.fetchrow(sql.INSERT_LEASED_TASK_SQLITE, params)
            if row is not None:
                await tx.execute(sql.INSERT_ATTEMPT_SQLITE, {**params, "task_id": params["id"]})
        if row is not None:
            hand(row)  # committed, and so durable: the create may answer once it returns
        return row

    async def claim(self, params: dict[str, Any], workflows: list[str]) -> list[Row]:
        params["workflows"] = json.dumps(workflows, separators=(",", ":"), ensure_ascii=False)
        consumer_id, host, now = params["consumer_id"], params["host"], params["now"]
        async with self.transaction() as tx:
            rows = await tx.fetch(sql.CLAIM_SQLITE, params)
            await tx.executemany(
                sql.INSERT_ATTEMPT_SQLITE,
                ({"lease_id": r["lease_id"], "task_id": r["id"], "consumer_id": consumer_id, "host": host, "now": now} for r in rows),
            )
        rows.sort(key=lambda r: (-r["priority"], r["seq"]))  # UPDATE … RETURNING keeps no order
        return rows

    async def finish(self, params: dict[str, Any]) -> Row | None:
        async with self.transaction():
            return await self._end_lease(params)

    async def complete_many(self, all_params: list[dict[str, Any]]) -> list[Row | None]:
        async with self.transaction():
            return [await self._end_lease(params) for params in all_params]

    async def _end_lease(self, params: dict[str, Any]) -> Row | None:
        """``finish`` inside the caller's transaction."""
        row = await self.fetchrow(sql.FINISH_SQLITE, params)
        if row is None:
            return None
        await self.execute(sql.END_FINISHED_ATTEMPT_SQLITE, params)
        if row["webhook_url"] is not None and row["status"] in TERMINAL:
            await self.execute(sql.ENQUEUE_WEBHOOK, params)
        return row

    async def cancel(self, params: dict[str, Any]) -> Row | None:
        async with self.transaction() as tx:
            row = await tx.fetchrow(sql.CANCEL_SQLITE, params)
            if row is not None and row["status"] == "CANCELLED":
                await tx.execute(sql.ENQUEUE_WEBHOOK, params)
        return row

    async def release(self, params: dict[str, Any]) -> Row | None:
        async with self.transaction() as tx:
            row = await tx.fetchrow(sql.RELEASE_SQLITE, params)
            if row is not None:
                await tx.execute(sql.END_ATTEMPT_SQLITE, params)
                await tx.execute(sql.ENQUEUE_WEBHOOK, params)
        return row

    async def expire(self, now: float) -> list[Row]:
        moved: list[Row] = []
        async with self.transaction() as tx:
            for due in await tx.fetch(sql.SELECT_EXPIRED_SQLITE, {"now": now}):
                params = {"id": due["id"], "lease_id": due["lease_id"], "now": now}
                row = await tx.fetchrow(sql.EXPIRE_ONE_SQLITE, params)
                if row is None:
                    continue
                params.update(outcome=due["outcome"], error=row["error"])
                await tx.execute(sql.END_ATTEMPT_SQLITE, params)
                await tx.execute(sql.ENQUEUE_WEBHOOK, params)
                moved.append(row)
        return moved

    async def expire_pending(self, now: float) -> list[Row]:
        async with self.transaction() as tx:
            rows = await tx.fetch(sql.EXPIRE_PENDING_SQLITE, {"now": now})
            for row in rows:
                if row["webhook_url"] is not None:
                    await tx.execute(sql.ENQUEUE_WEBHOOK, {"id": row["id"], "now": now})
        return rows

    async def expire_pending_one(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.EXPIRE_PENDING_ONE, params)

    @contextlib.asynccontextmanager
    async def pipeline_transaction(self, task_id: str) -> AsyncIterator[tuple["SqliteStore", Row | None]]:
        async with self.transaction() as tx:
            yield tx, await tx.fetchrow(sql.LOCK_PIPELINE_SQLITE, {"id": task_id})

    async def insert_stage_tasks(self, params: list[dict[str, Any]]) -> list[Row]:
        return [await self.fetchrow(sql.INSERT_STAGE_TASK_SQLITE, p) for p in params]

    async def expire_one(self, params: dict[str, Any]) -> Row | None:
        row = await self.fetchrow(sql.EXPIRE_ONE_SQLITE, params)
        if row is not None:
            await self.execute(sql.END_ATTEMPT_SQLITE, {**params, "error": row["error"]})
        return row

    async def claim_webhooks(self, params: dict[str, Any]) -> list[Row]:
        return await self.fetch(sql.CLAIM_WEBHOOKS_SQLITE, params)


def _split(script: str) -> list[str]:
    """Split a migration into statements, keeping $$-quoted function bodies whole."""
    statements, current, in_dollar = [], [], False
    for line in script.splitlines():
        if line.strip().startswith("--") and not in_dollar:
            continue
        current.append(line)
        if line.count("$$") % 2 == 1:
            in_dollar = not in_dollar
        if not in_dollar and line.rstrip().endswith(";"):
            statement = "\n".join(current).strip()
            if statement.strip(";").strip():
                statements.append(statement)
            current = []
    rest = "\n".join(current).strip()
    if rest:
        statements.append(rest)
    return statements
