"""Creates that arrive while one is being written share the next write (group commit), on both
backends; each caller still gets its own task, or its own idempotency conflict."""

from __future__ import annotations

import asyncio

from task_api.queue import Queue
from task_api.wakeup import Dispatcher
from taskfleet.errors import Conflict


def spec(data, key=None):
    return {"workflow": "echo", "input": {"data": data}, "priority": 0, "max_attempts": 3, "timeout_s": 60,
            "webhook_url": None, "metadata": {}, "idempotency_key": key,
            "body_hash": f"hash-{data}" if key else None}  # fmt: skip


def count_inserts(db) -> list[int]:
    """Wraps the database's statement calls; returns the rows each task INSERT carried."""
    seen: list[int] = []
    # PostgresStore.fetchrow goes through its fetch; SqliteStore's two are separate.
    for name in ("fetch",) if db.dialect == "postgres" else ("fetch", "fetchrow"):
        original = getattr(db, name)

        async def counted(query, params=None, _original=original):
            if "INSERT INTO tasks " in query:  # the batch insert starts with its CTEs
                seen.append(len(params["id_list"]) if "id_list" in params else 1)
            return await _original(query, params)

        setattr(db, name, counted)
    return seen


async def test_concurrent_creates_share_writes_and_keep_their_own_answers(queue_db):
    db = queue_db
    queue = Queue(db, Dispatcher(), lease_s=30, backoff_base_s=1, backoff_max_s=10)
    inserts = count_inserts(db)
    calls = [queue.create(**spec(i)) for i in range(40)]
    calls += [queue.create(**spec("same", key="k")) for _ in range(3)]  # same body: one task
    calls.append(queue.create(**spec("different", key="k")))  # same key, other body: 409
    results = await asyncio.gather(*calls, return_exceptions=True)

    plain, same, clash = results[:40], results[40:43], results[43]
    assert [row["input"] for row, created in plain] == [f'{{"data":{i}}}' for i in range(40)]
    assert all(created for _, created in plain) and len({row["id"] for row, _ in plain}) == 40
    assert len({row["id"] for row, _ in same}) == 1 and sum(created for _, created in same) == 1
    assert isinstance(clash, Conflict) and clash.code == "idempotency_conflict"
    assert sum(inserts) == 44
    if db.dialect == "postgres":
        # The first create went alone; the 43 that arrived while it was in flight went together.
        assert inserts == [1, 43]
    claimed = await queue.fetch(["echo"], consumer_id="c", host=None, limit=100, wait_s=0)
    assert len(claimed) == 41
    await queue.aclose()
