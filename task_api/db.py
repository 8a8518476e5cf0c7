"""Thin connectors for the two backends, and the schema migrations both run at start.

SQLite runs on one connection inside the event loop thread: its statements take tens of
microseconds in WAL mode, far less than a hop to a worker thread would, and a single writer
needs no locking of its own. ``synchronous=NORMAL`` in WAL mode keeps every commit across a
process crash (SIGKILL); only a power cut can lose the last commits. WAL checkpoints (copying
the log into the database file, with an fsync) run in a worker thread on a connection of their
own, not inside whichever commit crossed SQLite's threshold: there they stalled the event loop
for several milliseconds every few hundred commits. Postgres runs on an asyncpg pool, with one
extra connection that LISTENs for wake-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import asyncpg

from task_api import sql

log = logging.getLogger("taskfleet.api.db")

Row = dict[str, Any]
Listener = Callable[[str, str], None]  # (channel, payload)


def migrations(dialect: str) -> list[tuple[int, str]]:
    folder = resources.files("task_api") / "migrations" / dialect
    found = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(found)


class SqliteDB:
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

    async def fetch(self, query: str, params: dict[str, Any] | None = None) -> list[Row]:
        return [dict(r) for r in self._conn.execute(query, params or {})]

    async def fetchrow(self, query: str, params: dict[str, Any] | None = None) -> Row | None:
        row = self._conn.execute(query, params or {}).fetchone()
        return dict(row) if row is not None else None

    async def fetchval(self, query: str, params: dict[str, Any] | None = None) -> Any:
        row = self._conn.execute(query, params or {}).fetchone()
        return None if row is None else row[0]

    async def execute(self, query: str, params: dict[str, Any] | None = None) -> int:
        return self._conn.execute(query, params or {}).rowcount

    async def executemany(self, query: str, rows: Iterable[dict[str, Any]]) -> None:
        self._conn.executemany(query, list(rows))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator["SqliteDB"]:
        # Nothing in here may await something that suspends: the transaction is only atomic
        # because no other coroutine runs until COMMIT.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    async def listen(self, listener: Listener) -> None:
        """One process owns the file: the queue signals its waiters directly."""

    async def ping(self) -> None:
        self._conn.execute("SELECT 1").fetchone()


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


class PostgresDB:
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
        # Server PIDs of our pool's connections: NOTIFYs they caused were already signalled
        # in-process by the queue, which saves the round trip through the LISTEN connection.
        self._own_pids: set[int] = set()

    async def connect(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url, min_size=self._min, max_size=self._max, init=self._remember_backend, reset=_keep_session
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

    async def fetch(self, query: str, params: dict[str, Any] | None = None) -> list[Row]:
        text, args = self._args(query, params)
        if self._conn is not None:
            return [dict(r) for r in await self._conn.fetch(text, *args)]
        return [dict(r) for r in await self._pool.fetch(text, *args)]

    async def fetchrow(self, query: str, params: dict[str, Any] | None = None) -> Row | None:
        rows = await self.fetch(query, params)
        return rows[0] if rows else None

    async def fetchval(self, query: str, params: dict[str, Any] | None = None) -> Any:
        text, args = self._args(query, params)
        return await (self._conn or self._pool).fetchval(text, *args)

    async def execute(self, query: str, params: dict[str, Any] | None = None) -> int:
        text, args = self._args(query, params)
        status = await (self._conn or self._pool).execute(text, *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, query: str, rows: Iterable[dict[str, Any]]) -> None:
        text, names = sql.postgres(query)
        await (self._conn or self._pool).executemany(text, [[r[n] for n in names] for r in rows])

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator["PostgresDB"]:
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                bound = PostgresDB.__new__(PostgresDB)
                bound.__dict__.update(self.__dict__)
                bound._conn = conn
                yield bound

    async def listen(self, listener: Listener) -> None:
        self._listener = listener
        await self._open_listener()

    async def _open_listener(self) -> None:
        conn = await asyncpg.connect(self.url)

        def forward(_conn: Any, pid: int, channel: str, payload: str) -> None:
            if pid not in self._own_pids:  # another replica's change (ours woke our waiters already)
                self._listener(channel, payload)

        for channel in ("taskfleet_pending", "taskfleet_done"):
            await conn.add_listener(channel, forward)
        conn.add_termination_listener(lambda _c: self._on_listener_lost())
        self._listen_conn = conn

    def _on_listener_lost(self) -> None:
        # Wake-ups are an optimisation (the reaper's timer re-checks), but get them back.
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._open_listener()
                log.info("LISTEN connection re-established")
                self._listener("taskfleet_pending", "")
                return
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN reconnect failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL),
    a second round trip on every pooled query. Our pool connections never change session state:
    LISTEN has its own connection, the migration lock is released explicitly, and asyncpg still
    rolls back a transaction left open before calling this."""


def open_database(url: str) -> SqliteDB | PostgresDB:
    if url.startswith("sqlite:"):
        return SqliteDB(url)
    if url.startswith(("postgresql:", "postgres:", "postgresql+asyncpg:")):
        return PostgresDB(url)
    raise ValueError(f"unsupported database URL {url!r} (sqlite:///… or postgresql://…)")
