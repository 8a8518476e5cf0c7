"""8 concurrent fetchers over 2,000 tasks: never two live leases on one task, none lost, each completed once."""

from __future__ import annotations

import asyncio
from collections import Counter


from taskfleet.client import ConsumerClient

N_TASKS = 2000
N_FETCHERS = 8


async def test_concurrent_fetchers_complete_each_task_once(api, producer, database_url):
    ids = []
    for start in range(0, N_TASKS, 100):
        batch = await asyncio.gather(*(producer.submit("echo", {"data": i}) for i in range(start, start + 100)))
        ids += [t["task_id"] for t in batch]
    assert len(set(ids)) == N_TASKS

    claims: Counter[str] = Counter()
    completed: Counter[str] = Counter()

    async def fetcher(n: int) -> None:
        async with ConsumerClient(api.url, consumer_id=f"c{n}") as c:
            while True:
                tasks = await c.fetch(["echo"], limit=5, wait_s=0.5)
                if not tasks:
                    return
                for t in tasks:
                    claims[t["task_id"]] += 1
                for t in tasks:
                    result = await c.complete(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]})
                    assert result["status"] == "COMPLETED"
                    completed[t["task_id"]] += 1

    await asyncio.gather(*(fetcher(n) for n in range(N_FETCHERS)))

    assert set(claims) == set(ids)
    assert max(claims.values()) == 1, "a task was handed out twice"
    assert set(completed) == set(ids) and max(completed.values()) == 1

    page = await producer.list(status="COMPLETED", limit=500)
    total = len(page["items"])
    while page["next_cursor"]:
        page = await producer.list(status="COMPLETED", limit=500, cursor=page["next_cursor"])
        total += len(page["items"])
    assert total == N_TASKS
    for task_id in ids[:: N_TASKS // 20]:
        task = await producer.get(task_id)
        assert task["attempts"] == 1 and len(task["history"]) == 1
