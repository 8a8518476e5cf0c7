"""A /process caller's wait for its task (``Queue.wait_finished``), on both backends: answered
from the completion's own row, ahead of the consumer; after another replica's change, by a read."""

from __future__ import annotations

import asyncio

from task_api.queue import Queue
from task_api.schemas import task_json
from task_api.wakeup import Dispatcher
from test_api_group_commit import spec


def new_queue(db) -> Queue:
    return Queue(db, Dispatcher(), lease_s=30, backoff_base_s=1, backoff_max_s=10)


def count_reads(queue: Queue) -> list[str]:
    reads: list[str] = []
    get = queue.get

    async def counted(task_id):
        reads.append(task_id)
        return await get(task_id)

    queue.get = counted
    return reads


async def waiting_caller(queue: Queue) -> tuple[dict, asyncio.Task]:
    row, _ = await queue.create(**spec("sync"), notify_done=True)
    caller = asyncio.create_task(queue.wait_finished(row["id"], 20))
    await asyncio.sleep(0.05)  # it has read the task once and waits for the signal
    assert not caller.done()
    return row, caller


async def test_the_caller_is_answered_from_the_completion_before_the_consumer_is(queue_db):
    queue = new_queue(queue_db)
    row, caller = await waiting_caller(queue)
    [leased] = await queue.fetch(["echo"], consumer_id="c", host=None, limit=1, wait_s=0)
    reads = count_reads(queue)
    [done] = await queue.complete_many([(row["id"], leased["lease_id"], {"data": "sync"}, 0.0)])
    # The caller's answer was ready before the consumer's call returned, and needed no read.
    assert caller.done() and reads == []
    answered = caller.result()
    assert answered["id"] == row["id"] and answered["status"] == done["status"] == "COMPLETED"
    assert task_json(answered)["output"] == {"data": "sync"}
    await queue.aclose()


async def test_a_single_complete_answers_the_caller_first_too(queue_db):
    queue = new_queue(queue_db)
    row, caller = await waiting_caller(queue)
    [leased] = await queue.fetch(["echo"], consumer_id="c", host=None, limit=1, wait_s=0)
    reads = count_reads(queue)
    await queue.fail(leased["id"], leased["lease_id"], error={"code": "bad", "message": "no"}, retryable=False,
                     retry_after_s=None)
    assert caller.done() and reads == []
    assert caller.result()["status"] == "FAILED" and task_json(caller.result())["error"]["code"] == "bad"
    await queue.aclose()


async def test_a_change_made_by_another_replica_is_read_when_its_notify_comes(queue_db):
    queue, other = new_queue(queue_db), new_queue(queue_db)
    row, caller = await waiting_caller(queue)
    [leased] = await other.fetch(["echo"], consumer_id="c", host=None, limit=1, wait_s=0)
    await other.complete(leased["id"], leased["lease_id"], {"data": "elsewhere"})
    assert not caller.done()  # nothing told this replica yet
    reads = count_reads(queue)
    queue._dispatcher.on_notify("taskfleet_done", row["id"])  # as LISTEN delivers it
    answered = await asyncio.wait_for(caller, 5)
    assert reads == [row["id"]] and answered["status"] == "COMPLETED"
    assert task_json(answered)["output"] == {"data": "elsewhere"}
    await queue.aclose()
    await other.aclose()

