"""A lone create while a fetch is parked goes straight to that fetch: inserted already leased to
its consumer, one statement instead of an insert and a claim, on both backends."""

from __future__ import annotations

import asyncio

from task_api.queue import Queue
from task_api import wakeup
from task_api.wakeup import HANDOFF_AFTER_S, Dispatcher
from test_api_group_commit import spec


def record_statements(db) -> list[str]:
    seen: list[str] = []
    # PostgresStore.fetchrow goes through its fetch; SqliteStore's are separate.
    names = ("fetch", "execute") if db.dialect == "postgres" else ("fetch", "fetchrow", "execute", "executemany")
    for name in names:
        original = getattr(db, name)

        async def recorded(query, params=None, _original=original):
            seen.append(" ".join(query.split())[:60])
            return await _original(query, params)

        setattr(db, name, recorded)
    return seen


async def parked_fetch(queue: Queue, dispatcher: Dispatcher, consumer_id: str) -> asyncio.Task:
    fetch = asyncio.create_task(queue.fetch(["echo"], consumer_id=consumer_id, host="h1", limit=5, wait_s=10))
    for _ in range(100):  # until it has looked, found nothing and parked
        await asyncio.sleep(0.01)
        if any(w.parked_at is not None for w in dispatcher._waiters):
            await asyncio.sleep(2 * HANDOFF_AFTER_S)  # parked long enough to be handed a task
            return fetch
    raise AssertionError("the fetch never parked")


async def test_a_create_is_handed_to_the_parked_fetch(queue_db):
    dispatcher = Dispatcher()
    queue = Queue(queue_db, dispatcher, lease_s=30, backoff_base_s=1, backoff_max_s=10)
    fetch = await parked_fetch(queue, dispatcher, "waiting")
    statements = record_statements(queue_db)
    row, created = await queue.create(**spec("handed"))
    [got] = await asyncio.wait_for(fetch, 5)

    assert created and got["id"] == row["id"] and got["status"] == "PROCESSING"
    assert row["status"] == "PENDING" and row["lease_id"] is None  # the create's answer: as accepted
    assert got["consumer_id"] == "waiting" and got["lease_id"] and got["lease_expires_at"] > got["created_at"]
    # One write for the create and the lease together; no claim after it.
    assert len(statements) <= 2 and not any("UPDATE tasks" in s or "WITH picked" in s for s in statements)
    [attempt] = await queue.history(row["id"])
    assert attempt["consumer_id"] == "waiting" and attempt["host"] == "h1" and attempt["outcome"] is None
    done = await queue.complete(row["id"], got["lease_id"], {"ok": True})  # the lease is a real one
    assert done["status"] == "COMPLETED" and done["attempts"] == 1
    await queue.aclose()


async def test_a_fetch_that_only_just_parked_is_woken_to_claim_instead(queue_db, monkeypatch):
    """In a busy stretch the woken fetch's claim takes everything created meanwhile at once."""
    monkeypatch.setattr(wakeup, "HANDOFF_AFTER_S", 60.0)  # "just parked", however slow the machine
    dispatcher = Dispatcher()
    queue = Queue(queue_db, dispatcher, lease_s=30, backoff_base_s=1, backoff_max_s=10)
    fetch = asyncio.create_task(queue.fetch(["echo"], consumer_id="busy", host=None, limit=5, wait_s=10))
    while not any(w.parked_at is not None for w in dispatcher._waiters):
        await asyncio.sleep(0)
    statements = record_statements(queue_db)
    row, _ = await queue.create(**spec("claimed"))
    [got] = await asyncio.wait_for(fetch, 5)
    assert got["id"] == row["id"] and got["consumer_id"] == "busy"
    assert any("WITH picked" in s or s.startswith("UPDATE tasks SET status = 'PROCESSING'") for s in statements)
    await queue.aclose()


async def test_a_repeated_idempotency_key_hands_nothing_and_the_fetch_keeps_waiting(queue_db):
    dispatcher = Dispatcher()
    queue = Queue(queue_db, dispatcher, lease_s=30, backoff_base_s=1, backoff_max_s=10)
    first, _ = await queue.create(**spec("once", key="k"))
    [leased] = await queue.fetch(["echo"], consumer_id="a", host=None, limit=1, wait_s=0)
    assert leased["id"] == first["id"]

    fetch = await parked_fetch(queue, dispatcher, "b")
    again, created = await queue.create(**spec("once", key="k"))
    assert again["id"] == first["id"] and not created
    await asyncio.sleep(0.1)
    assert not fetch.done()  # woken, found nothing to claim, parked again

    fresh, _ = await queue.create(**spec("fresh"))
    [got] = await asyncio.wait_for(fetch, 5)
    assert got["id"] == fresh["id"] and got["consumer_id"] == "b"
    await queue.aclose()


async def test_over_http_the_create_answers_pending_and_the_parked_consumer_has_it(api, producer, consumer):
    waiting = asyncio.create_task(consumer.fetch(["echo"], wait_s=10))
    await asyncio.sleep(0.3)  # parked well past HANDOFF_AFTER_S
    created = await producer.submit("echo", {"data": "now"})
    assert created["status"] == "PENDING" and created["consumer_id"] is None  # the contract's create shape
    [got] = await asyncio.wait_for(waiting, 5)
    assert got["task_id"] == created["task_id"] and got["lease"]["id"]
    assert (await producer.get(created["task_id"]))["status"] == "PROCESSING"


async def test_on_postgres_the_handed_task_is_flushed_before_the_create_answers(postgres_db):
    """The hand-off's insert commits without waiting for its WAL flush, so the consumer has it
    sooner; the producer's answer still waits until the task is on disk. (SQLite commits in
    process; its durability is the SIGKILL test's.)"""
    dispatcher = Dispatcher()
    queue = Queue(postgres_db, dispatcher, lease_s=30, backoff_base_s=1, backoff_max_s=10)
    fetch = await parked_fetch(queue, dispatcher, "waiting")
    row, created = await queue.create(**spec("durable"))
    flushed = await postgres_db.fetchrow("SELECT pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn() AS ok")
    [got] = await asyncio.wait_for(fetch, 5)
    assert created and got["id"] == row["id"]
    assert flushed["ok"], "the create answered before its task's WAL reached disk"
    await queue.aclose()


async def test_a_task_and_its_history_are_read_as_of_one_moment(queue_db):
    """A completion committed between the task's read and its history's (forced here) is not
    shown torn, as an ended attempt on a task still PROCESSING."""
    queue = Queue(queue_db, Dispatcher(), lease_s=30, backoff_base_s=1, backoff_max_s=10)
    row, _ = await queue.create(**spec("read together"))
    [leased] = await queue.fetch(["echo"], consumer_id="c", host=None, limit=1, wait_s=0)
    history = queue.history
    completed = False

    async def completing_first(task_id):
        nonlocal completed
        if not completed:
            completed = True
            await queue.complete(task_id, leased["lease_id"], {"ok": True})
        return await history(task_id)

    queue.history = completing_first
    task, attempts = await queue.with_history(row["id"])
    assert completed
    assert task["status"] == "COMPLETED" and [a["outcome"] for a in attempts] == ["completed"]
