"""Several API replicas on one Postgres: wake-ups cross replicas; claims never overlap."""

from __future__ import annotations

import asyncio
from collections import Counter

from support import api_process, postgres_database
from taskfleet.client import ConsumerClient, ProducerClient


async def test_replicas_share_wakeups_and_never_double_lease(tmp_path):
    env = {"TASKFLEET_REAP_INTERVAL_S": "60", "TASKFLEET_LEASE_S": "30"}
    with postgres_database() as url, api_process(url, tmp_path, **env) as a, api_process(url, tmp_path, **env) as b:
        async with ProducerClient(a.url) as producer, ConsumerClient(b.url) as waiting:
            # A fetch parked on replica B is woken by a create on replica A (LISTEN/NOTIFY); the
            # fallback timer is 60 s away and the poll 30 s, so nothing else could deliver it.
            fetch = asyncio.create_task(waiting.fetch(["echo"], wait_s=30))
            await asyncio.sleep(0.5)
            created = await producer.submit("echo", {"data": "cross"})
            got = await asyncio.wait_for(fetch, 20)
            assert [t["task_id"] for t in got] == [created["task_id"]]

            ids = {(await producer.submit("echo", {"data": i}))["task_id"] for i in range(300)}
            claims: Counter[str] = Counter()

            async def drain(url: str, n: int) -> None:
                async with ConsumerClient(url, consumer_id=f"c{n}") as c:
                    while tasks := await c.fetch(["echo"], limit=4, wait_s=0.3):
                        for t in tasks:
                            claims[t["task_id"]] += 1
                            await c.complete(t["task_id"], t["lease"]["id"], {})

            await asyncio.gather(*(drain(u, n) for n, u in enumerate([a.url, b.url] * 3)))
            assert set(claims) == ids and max(claims.values()) == 1


async def test_own_changes_wake_in_process_and_own_notifies_are_ignored():
    """On Postgres a replica wakes its own waiters directly and drops the NOTIFY its own change
    caused; a change made by anyone else still arrives through LISTEN."""
    import asyncpg

    from task_api.store import PostgresStore
    from task_api.queue import Queue
    from task_api.wakeup import Dispatcher

    spec = {"workflow": "echo", "input": {}, "priority": 0, "max_attempts": 3, "timeout_s": 60,
            "webhook_url": None, "metadata": {}, "idempotency_key": None, "body_hash": None}  # fmt: skip
    with postgres_database() as url:
        db = PostgresStore(url)
        await db.connect()
        heard: list[tuple[str, str]] = []
        await db.listen(lambda channel, payload: heard.append((channel, payload)))
        try:
            queue = Queue(db, Dispatcher(), lease_s=30, backoff_base_s=1, backoff_max_s=10)
            fetch = asyncio.create_task(queue.fetch(["echo"], consumer_id="c", host=None, limit=1, wait_s=10))
            await asyncio.sleep(0.2)
            (row, created), = await queue.create_many([spec])
            got = await asyncio.wait_for(fetch, 5)  # no reaper runs here: only the in-process signal
            assert created and [r["id"] for r in got] == [row["id"]]

            other = await asyncpg.connect(url)
            try:
                await other.execute("NOTIFY taskfleet_pending, 'from-elsewhere'")
            finally:
                await other.close()
            for _ in range(100):
                if heard:
                    break
                await asyncio.sleep(0.02)
            assert heard == [("taskfleet_pending", "from-elsewhere")]  # our own INSERT's NOTIFY was dropped
        finally:
            await db.close()
