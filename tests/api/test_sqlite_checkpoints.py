"""SQLite's WAL checkpoints run in a worker thread, never inside a commit on the event loop."""

from __future__ import annotations

import asyncio
import os

from task_api.store import SqliteStore

PAGE = 4096


async def write_rows(db: SqliteStore, n: int) -> None:
    await db.execute("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, body TEXT)")
    for i in range(n):  # one commit each, as the queue's statements are
        await db.execute("INSERT INTO filler (body) VALUES (:body)", {"body": os.urandom(1500).hex()})


async def test_commits_on_the_loop_never_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(SqliteStore, "CHECKPOINT_EVERY_S", 3600.0)  # the worker never gets a turn
    db = SqliteStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    await db.connect()
    size_before = os.path.getsize(db.path)
    await write_rows(db, 3000)  # ~3,000 pages: three times SQLite's own checkpoint threshold
    assert os.path.getsize(db.path + "-wal") > 2000 * PAGE  # the log was never reset by a commit
    assert os.path.getsize(db.path) == size_before  # and nothing reached the database file
    await db.close()


async def test_the_worker_copies_the_log_into_the_database_while_writes_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(SqliteStore, "CHECKPOINT_EVERY_S", 0.05)
    db = SqliteStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    await db.connect()
    size_before = os.path.getsize(db.path)
    await write_rows(db, 1500)
    for _ in range(200):
        if os.path.getsize(db.path) > size_before + 1000 * PAGE:
            break
        await asyncio.sleep(0.05)
    assert os.path.getsize(db.path) > size_before + 1000 * PAGE
    await write_rows(db, 100)  # the loop keeps writing beside it
    assert await db.fetchval("SELECT count(*) FROM filler") == 1600
    await db.close()
    assert not os.path.exists(db.path + "-wal")  # closing checkpointed the rest
