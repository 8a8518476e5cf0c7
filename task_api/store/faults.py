"""Database faults as the API answers them: 503 with a code that says what a resend would do.

The stores translate their driver's errors here, where they arise, into three kinds:

- ``database_unavailable``: the statement never ran, or the server refused it and rolled it back
  (connection refused, server starting or shutting down, too many connections, a backend
  terminated while idle, a locked SQLite file). Nothing changed; resending is safe.
- ``database_full`` (SQLite): the disk is full; the statement was rolled back.
- ``commit_unknown``: the connection went away after a write (or a COMMIT) was sent and before
  its answer came. The database may have committed it; only an idempotent resend is safe.

A server-reported error (an ErrorResponse, e.g. ``57P01 admin_shutdown``) means the statement
failed and its transaction rolled back: Postgres holds interrupts while it commits, so a commit
that began is answered before the backend exits. Only a connection closed with no answer leaves
the outcome unknown.
"""

from __future__ import annotations

import re
import sqlite3

import asyncpg

from taskfleet.errors import CommitUnknown, DatabaseFull, DatabaseUnavailable

# Any statement that can change a row; reads (SELECT without these) are never commit_unknown.
_WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE|pg_logical_emit_message)\b", re.IGNORECASE)

# Errors the server sent for a statement it did not run (or rolled back), and connect failures.
_REFUSED_BY_POSTGRES = (
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    asyncpg.AdminShutdownError,  # 57P01: fast shutdown, pg_terminate_backend
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.ReadOnlySQLTransactionError,  # 25006: a standby, mid-failover
    asyncpg.PostgresConnectionError,  # class 08 sent by the server
)

# The connection closed under the statement: no answer came.
_LOST = (asyncpg.ConnectionDoesNotExistError, ConnectionError, EOFError)

_SQLITE_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
_SQLITE_AWAY = ("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PROTOCOL", "SQLITE_NOMEM")


def is_write(query: str) -> bool:
    return _WRITES.search(query) is not None


def from_postgres(exc: BaseException, *, maybe_committed: bool) -> Exception | None:
    """The API error for a driver error raised by a statement (None: not a database fault, let
    it through). ``maybe_committed``: the statement was a write outside a transaction, or a COMMIT."""
    if isinstance(exc, _LOST) or (isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)):
        if maybe_committed and not _never_sent(exc):
            return CommitUnknown(f"the database connection was lost before the write was confirmed: {exc}")
        return DatabaseUnavailable(f"the database connection was lost: {exc}")
    if isinstance(exc, asyncpg.InternalClientError):
        # asyncpg's protocol state was left mid-operation by a connection the server dropped
        # (seen after a restart): it refuses the call before sending anything.
        return DatabaseUnavailable(f"the database connection is broken: {exc}")
    if isinstance(exc, _REFUSED_BY_POSTGRES):
        return DatabaseUnavailable(f"the database refused the statement: {exc}")
    if isinstance(exc, (OSError, TimeoutError)):
        return DatabaseUnavailable(f"the database is unreachable: {exc}")
    return None


def is_broken(exc: BaseException) -> bool:
    """Whether the connection that raised ``exc`` is unusable and must not go back to the pool."""
    return isinstance(exc, asyncpg.InternalClientError)


def from_connect(exc: BaseException) -> Exception | None:
    """The API error for a failure to get a connection (nothing was sent)."""
    if isinstance(exc, (OSError, TimeoutError, asyncpg.PostgresConnectionError, *_REFUSED_BY_POSTGRES)):
        return DatabaseUnavailable(f"the database is unreachable: {exc}")
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return DatabaseUnavailable(f"the database pool is closed: {exc}")
    return None


def _never_sent(exc: BaseException) -> bool:
    # asyncpg checks the connection before writing: "connection is closed" is raised unsent.
    return isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, asyncpg.ConnectionDoesNotExistError)


def from_sqlite(exc: BaseException) -> Exception | None:
    """SQLite's statements are atomic on their own and each transaction rolls back on failure,
    so none of its faults leaves a commit unknown."""
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_FULL":
        return DatabaseFull(f"the database's disk is full: {exc}")
    if name.startswith(_SQLITE_BUSY):
        return DatabaseUnavailable(f"the database file is locked by another process: {exc}")
    if name.startswith(_SQLITE_AWAY):
        return DatabaseUnavailable(f"the database file cannot be written: {exc}")
    return None


def classify(exc: BaseException) -> Exception | None:
    """For the API's last-resort handler: a driver error that escaped a store (not expected)
    still answers 503, never 500; the outcome is taken as unknown where it could be."""
    if isinstance(exc, sqlite3.Error):
        return from_sqlite(exc)
    return from_postgres(exc, maybe_committed=True)


class SqliteGuard:
    """``with GUARD:`` around SQLite calls: a plain context manager (no generator), as cheap as
    the try/except it stands for on the hot path."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is not None and (fault := from_sqlite(exc)) is not None:
            raise fault from exc
        return False


SQLITE_GUARD = SqliteGuard()
