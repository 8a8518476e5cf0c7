"""The Postgres store: an asyncpg pool, and one extra connection that LISTENs for wake-ups.

Each state change is one statement (data-modifying CTEs where SQLite needs several), so one
round trip and one commit; row locks and ``SKIP LOCKED`` keep API replicas sharing the
database from taking the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Callable, Iterable

import asyncpg

from task_api.store import faults, sql
from task_api.store.base import Listener, Row, Store, migrations
from taskfleet.errors import CommitUnknown, DatabaseUnavailable

log = logging.getLogger("taskfleet.api.db")


LISTEN_APPLICATION_NAME = "taskfleet-listen"
POOL_APPLICATION_NAME = "taskfleet-api"


class PostgresStore(Store):
    dialect = "postgres"
    MIGRATION_LOCK = 7_244_311_901  # advisory lock key: replicas starting together migrate once

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10) -> None:
        self.url = url.replace("postgresql+asyncpg://", "postgresql://")
        self._pool: asyncpg.Pool | None = None
        self._min, self._max = min_size, max_size
        self._listen_conn: asyncpg.Connection | None = None
        self._listener: Listener | None = None
        self._conn: asyncpg.Connection | None = None  # set inside transaction()
        self._reconnect_task: asyncio.Task | None = None
        self._listen_state: Callable[[bool], None] = lambda up: None
        self._closing = False
        # Server PIDs of our pool's connections: NOTIFYs they caused were already signalled
        # in-process by the queue, which saves the round trip through the LISTEN connection.
        self._own_pids: set[int] = set()

    async def connect(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url, min_size=self._min, max_size=self._max, init=self._remember_backend, reset=_keep_session,
            server_settings={"application_name": POOL_APPLICATION_NAME},
        )
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", self.MIGRATION_LOCK)
            try:
                await self._migrate(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", self.MIGRATION_LOCK)

    async def _remember_backend(self, conn: asyncpg.Connection) -> None:
        self._own_pids.add(conn.get_server_pid())

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, text in migrations(self.dialect):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(text)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("postgres schema migrated to version %s", version)

    async def close(self) -> None:
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._listen_conn.close()
        if self._pool is not None:
            await self._pool.close()

    def _args(self, query: str, params: dict[str, Any] | None) -> tuple[str, list[Any]]:
        text, names = sql.postgres(query)
        params = params or {}
        return text, [params[n] for n in names]

    async def _run(self, method: str, query: str, args: list[Any]) -> Any:
        """One statement on the transaction's connection, or on one from the pool, with the
        driver's connection faults turned into the API's 503s (see faults.py)."""
        conn = self._conn
        if conn is not None:  # inside transaction(): nothing commits before its COMMIT
            try:
                return await getattr(conn, method)(query, *args)
            except Exception as exc:
                if faults.is_broken(exc):
                    conn.terminate()  # its transaction is lost either way
                if (fault := faults.from_postgres(exc, maybe_committed=False)) is None:
                    raise
                raise fault from exc
        conn = await self._acquire()
        try:
            return await getattr(conn, method)(query, *args)
        except Exception as exc:
            if faults.is_broken(exc):
                conn.terminate()  # the pool opens a fresh one in its place
            if (fault := faults.from_postgres(exc, maybe_committed=faults.is_write(query))) is None:
                raise
            raise fault from exc
        finally:
            await self._pool.release(conn)

    async def fetch(self, query: str, params: dict[str, Any] | None = None) -> list[Row]:
        text, args = self._args(query, params)
        return [dict(r) for r in await self._run("fetch", text, args)]

    async def fetch_custom_plan(self, query: str, params: dict[str, Any] | None = None) -> list[Row]:
        async with self.transaction() as tx:
            await tx.execute(sql.PLAN_EACH_CALL)
            return await tx.fetch(query, params)

    async def fetchrow(self, query: str, params: dict[str, Any] | None = None) -> Row | None:
        rows = await self.fetch(query, params)
        return rows[0] if rows else None

    async def fetchval(self, query: str, params: dict[str, Any] | None = None) -> Any:
        text, args = self._args(query, params)
        return await self._run("fetchval", text, args)

    async def execute(self, query: str, params: dict[str, Any] | None = None) -> int:
        text, args = self._args(query, params)
        status = await self._run("execute", text, args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def _acquire(self) -> Any:
        """A pool connection; a database that cannot be reached is its fault code, not a 500."""
        try:
            return await self._pool.acquire()
        except Exception as exc:
            if (fault := faults.from_connect(exc)) is None:
                raise
            raise fault from exc

    async def executemany(self, query: str, rows: Iterable[dict[str, Any]]) -> None:
        text, names = sql.postgres(query)
        await self._run("executemany", text, [[[r[n] for n in names] for r in rows]])

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator["PostgresStore"]:
        conn = await self._acquire()
        try:
            tx = conn.transaction()
            try:
                await tx.start()
            except Exception as exc:
                if faults.is_broken(exc):
                    conn.terminate()
                if (fault := faults.from_postgres(exc, maybe_committed=False)) is None:
                    raise
                raise fault from exc
            bound = PostgresStore.__new__(PostgresStore)
            bound.__dict__.update(self.__dict__)
            bound._conn = conn
            try:
                yield bound
            except BaseException:
                # On a lost connection the rollback fails too; the server rolls back on its own.
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise
            try:
                await tx.commit()
            except Exception as exc:
                if (fault := faults.from_postgres(exc, maybe_committed=True)) is None:
                    raise
                raise fault from exc
        finally:
            await self._pool.release(conn)

    async def listen(self, listener: Listener, connected: Callable[[bool], None] | None = None) -> None:
        self._listener = listener
        self._listen_state = connected or (lambda up: None)
        await self._open_listener()
        self._listen_state(True)

    async def _open_listener(self) -> None:
        # Named, so that an operator (or a test) can tell it from the pool's backends.
        conn = await asyncpg.connect(self.url, server_settings={"application_name": LISTEN_APPLICATION_NAME})

        def forward(_conn: Any, pid: int, channel: str, payload: str) -> None:
            if pid not in self._own_pids:  # another replica's change (ours woke our waiters already)
                self._listener(channel, payload)

        try:
            for channel in ("taskfleet_pending", "taskfleet_done"):
                await conn.add_listener(channel, forward)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        conn.add_termination_listener(lambda _c: self._on_listener_lost())
        self._listen_conn = conn

    def _on_listener_lost(self) -> None:
        # Wake-ups are an optimisation (the reaper's timer re-checks), but get them back.
        if self._closing:
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            log.warning(
                "LISTEN connection lost: other replicas' changes now reach parked fetches only through the "
                "reaper's periodic ready-check (TASKFLEET_REAP_INTERVAL_S) until it is back"
            )
            self._listen_state(False)
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._open_listener()
            except Exception as exc:  # refused, starting up, timed out: the server is not back yet
                log.warning("LISTEN reconnect failed (%s: %s); next try in %.1fs", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            log.info("LISTEN connection re-established")
            self._listen_state(True)
            # NOTIFYs sent while it was away are gone: every parked fetch looks again.
            self._listener("taskfleet_pending", "")
            return

    async def ping(self) -> None:
        await self._run("fetchval", "SELECT 1", [])

    # -- state changes: each one statement, one round trip -------------------------------------
    async def take_create_tokens(self, producer: str, n: int, rate: float, capacity: float, now: float) -> float | None:
        return await self.fetchval(
            sql.TAKE_CREATE_TOKENS_POSTGRES, {"producer": producer, "n": n, "rate": rate, "capacity": capacity, "now": now}
        )

    async def create_tokens_now(self, producer: str, rate: float, capacity: float, now: float) -> float:
        value = await self.fetchval(sql.CREATE_TOKENS_NOW_POSTGRES, {"producer": producer, "rate": rate, "capacity": capacity, "now": now})
        return capacity if value is None else float(value)

    async def lock_producer(self, producer: str) -> None:
        await self.fetchval(sql.LOCK_PRODUCER_POSTGRES, {"producer": producer})

    async def insert_tasks(self, params: list[dict[str, Any]]) -> list[Row | None]:
        columns = {f"{name}_list": [p[name] for p in params] for name in sql.INSERT_TASKS_COLUMNS}
        rows = await self.fetch(sql.INSERT_TASKS_POSTGRES, {**columns, "now": params[0]["now"]})
        by_id = {row["id"]: row for row in rows}
        return [by_id.get(p["id"]) for p in params]

    insert_tasks_together = insert_tasks  # one statement: atomic, and one commit, by itself

    async def set_priority(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.SET_PRIORITY_POSTGRES, params)

    async def insert_task(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.INSERT_TASK_POSTGRES, params)

    async def insert_leased_task(self, params: dict[str, Any], hand: Callable[[Row], None]) -> Row | None:
        row = await self.fetchrow(sql.INSERT_LEASED_TASK_POSTGRES, params)
        if row is not None:
            hand(row)
            # The insert committed without waiting for its WAL flush, so the consumer has the
            # task now; the producer hears of it once it is flushed (the fetch's answer is
            # written meanwhile). Should Postgres crash first, the create fails (nothing
            # accepted is lost) and the consumer's lease on the vanished task is fenced.
            try:
                await self.execute(sql.FLUSH_WAL_POSTGRES)
            except DatabaseUnavailable as exc:
                # The insert committed (unflushed) and the consumer has it: whether it survives
                # depends on whether its WAL reached the disk, which nobody can tell now.
                raise CommitUnknown(f"the task was written but its flush was not confirmed: {exc.message}") from exc
        return row

    async def claim(self, params: dict[str, Any], workflows: list[str]) -> list[Row]:
        params["workflows"] = workflows
        return await self.fetch(sql.CLAIM_POSTGRES, params)

    async def finish(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.FINISH_POSTGRES, params)

    async def complete_many(self, all_params: list[dict[str, Any]]) -> list[Row | None]:
        # One statement for the lot: one round trip, not one per item.
        if not all_params:
            return []
        columns = {f"{name}_list": [p[name] for p in all_params] for name in ("id", "lease_id", "output", "compute_s")}
        found = await self.fetch(sql.COMPLETE_MANY_POSTGRES, {**columns, "now": all_params[0]["now"]})
        by_lease = {row.pop("fenced_lease_id"): row for row in found}
        # A lease listed twice ends once: its first item gets the row, a repeat is fenced.
        return [by_lease.pop(p["lease_id"], None) for p in all_params]

    async def cancel(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.CANCEL_POSTGRES, params)

    async def release(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.RELEASE_POSTGRES, params)

    async def expire(self, now: float) -> list[Row]:
        return await self.fetch(sql.EXPIRE_POSTGRES, {"now": now})

    async def expire_pending(self, now: float) -> list[Row]:
        return await self.fetch(sql.EXPIRE_PENDING_POSTGRES, {"now": now})

    async def expire_pending_one(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.EXPIRE_PENDING_ONE, params)

    @contextlib.asynccontextmanager
    async def pipeline_transaction(self, task_id: str) -> AsyncIterator[tuple["PostgresStore", Row | None]]:
        async with self.transaction() as tx:
            yield tx, await tx.fetchrow(sql.LOCK_PIPELINE_POSTGRES, {"id": task_id})

    async def insert_stage_tasks(self, params: list[dict[str, Any]]) -> list[Row]:
        if not params:
            return []
        columns = {f"{name}_list": [p[name] for p in params] for name in sql.INSERT_STAGE_TASKS_COLUMNS}
        return await self.fetch(sql.INSERT_STAGE_TASKS_POSTGRES, {**columns, "now": params[0]["now"]})

    async def expire_one(self, params: dict[str, Any]) -> Row | None:
        return await self.fetchrow(sql.EXPIRE_ONE_POSTGRES, params)

    async def claim_webhooks(self, params: dict[str, Any]) -> list[Row]:
        return await self.fetch(sql.CLAIM_WEBHOOKS_POSTGRES, params)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL),
    a second round trip on every pooled query. Our pool connections never change session state:
    LISTEN has its own connection, the migration lock is released explicitly, and asyncpg still
    rolls back a transaction left open before calling this."""
