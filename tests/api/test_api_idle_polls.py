"""Idle long polls cost the database nothing: a fetch whose workflows were all found empty since
their last change parks without a claim, on both backends, and claims again after any change
(or whenever changes might go unseen: a Postgres replica without its LISTEN connection)."""

from __future__ import annotations

from task_api.queue import Queue
from task_api.wakeup import Dispatcher
from test_api_group_commit import spec


def count_claims(db) -> list[list[str]]:
    claims: list[list[str]] = []
    original = db.claim

    async def counted(params, workflows):
        claims.append(list(workflows))
        return await original(params, workflows)

    db.claim = counted
    return claims


async def fetch(queue: Queue, *workflows: str) -> list:
    return await queue.fetch(list(workflows), consumer_id="c", host=None, limit=1, wait_s=0)


async def test_an_idle_poll_parks_without_a_claim_until_something_changes(queue_db):
    dispatcher = Dispatcher()
    dispatcher.signals_complete = True  # as the app sets it (SQLite; Postgres while listening)
    queue = Queue(queue_db, dispatcher, lease_s=30, backoff_base_s=1, backoff_max_s=10)
    claims = count_claims(queue_db)

    assert await fetch(queue, "echo") == [] and len(claims) == 1  # nothing known yet: it looks
    assert await fetch(queue, "echo") == [] and len(claims) == 1  # found empty, unchanged since
    assert await fetch(queue, "echo", "tts") == [] and len(claims) == 2  # tts never looked at
    assert await fetch(queue, "tts", "echo") == [] and len(claims) == 2

    row, _ = await queue.create(**spec("new"))  # a change to echo: the next poll claims it
    [got] = await fetch(queue, "echo", "tts")
    assert got["id"] == row["id"] and len(claims) == 3
    assert await fetch(queue, "echo") == [] and len(claims) == 4  # it came back short: empty again
    assert await fetch(queue, "echo") == [] and len(claims) == 4

    dispatcher.pending(None)  # a change of unknown workflow (a LISTEN reconnect) re-arms them all
    assert await fetch(queue, "tts") == [] and len(claims) == 5
    await queue.aclose()


async def test_every_poll_claims_while_changes_might_go_unseen(queue_db):
    dispatcher = Dispatcher()  # signals_complete False: a Postgres replica not (yet) listening
    queue = Queue(queue_db, dispatcher, lease_s=30, backoff_base_s=1, backoff_max_s=10)
    claims = count_claims(queue_db)
    for n in range(1, 4):
        assert await fetch(queue, "echo") == [] and len(claims) == n
    await queue.aclose()
