"""Where tasks are kept: the ``Store`` interface and a store per database, chosen by URL."""

from __future__ import annotations

from task_api.store.base import Listener, Row, Store
from task_api.store.postgres import PostgresStore
from task_api.store.sqlite import SqliteStore

__all__ = ["Listener", "PostgresStore", "Row", "SqliteStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    if url.startswith("sqlite:"):
        return SqliteStore(url)
    if url.startswith(("postgresql:", "postgres:", "postgresql+asyncpg:")):
        return PostgresStore(url)
    raise ValueError(f"unsupported database URL {url!r} (sqlite:///… or postgresql://…)")
