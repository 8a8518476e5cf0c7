"""Fair share within a priority across producers (CONTRACT §9), through a real API process on
SQLite and on Postgres: the order of claims is what is checked, never the time they take."""

from __future__ import annotations

import asyncio

import pytest

from taskfleet.client import ConsumerClient, ProducerClient

TOKENS = {"web": "web-secret", "batch": "batch-secret", "mobile": "mobile-secret", "consumer": "cons-secret"}


@pytest.fixture
def api_env():
    return {
        "TASKFLEET_PRODUCER_TOKENS": ",".join(f"{name}:{TOKENS[name]}" for name in ("web", "batch", "mobile")),
        "TASKFLEET_CONSUMER_TOKENS": TOKENS["consumer"],
        "TASKFLEET_PRODUCER_WEIGHTS": "mobile:3",
        "TASKFLEET_LEASE_S": "300",
    }


async def backlog(client: ProducerClient, n: int, *, priority: int = 0, tag: str = "") -> list[str]:
    """n tasks through the batch route, 500 a request; their ids in order."""
    ids: list[str] = []
    for start in range(0, n, 500):
        items = [{"workflow": "echo", "input": {"data": f"{tag}{i}"}, "priority": priority}
                 for i in range(start, min(n, start + 500))]  # fmt: skip
        ids += [t["task_id"] for t in await client.submit_many(items)]
    return ids


async def claims(consumer: ConsumerClient, n: int, *, limit: int = 1) -> list[dict]:
    """Claim and complete n tasks, in the order the API hands them out (one a fetch by default:
    the tasks of one fetch come back in no particular order)."""
    got: list[dict] = []
    while len(got) < n:
        tasks = await consumer.fetch(None, limit=min(limit, n - len(got)), wait_s=5)
        assert tasks, f"only {len(got)} of {n} claimable"
        await consumer.complete_many([(t["task_id"], t["lease"]["id"], {"data": 1}) for t in tasks])
        got += tasks
    return got


@pytest.fixture
async def clients(api):
    async with (
        ProducerClient(api.url, TOKENS["web"]) as web,
        ProducerClient(api.url, TOKENS["batch"]) as batch,
        ProducerClient(api.url, TOKENS["mobile"]) as mobile,
        ConsumerClient(api.url, TOKENS["consumer"], consumer_id="c1") as consumer,
    ):
        yield web, batch, mobile, consumer


async def test_a_backlog_does_not_starve_another_producers_new_tasks(clients):
    web, batch, _, consumer = clients
    backlog_ids = await backlog(batch, 10_000)
    mine = [(await web.submit("echo", {"data": i}))["task_id"] for i in range(10)]
    order = [t["task_id"] for t in await claims(consumer, 40)]
    positions = sorted(order.index(task_id) for task_id in mine)
    # one backlog task ahead of each of web's: they run 2nd, 4th, … 20th, not after 10,000
    assert positions == list(range(1, 20, 2))
    for task_id in mine:
        assert (await web.get(task_id))["status"] == "COMPLETED"
    # and the backlog itself still runs in its own order
    assert [i for i in order if i not in mine] == backlog_ids[:30]
    assert (await batch.list(status="PENDING", limit=1))["items"]  # far from drained


async def test_weights_share_the_claims_and_priority_still_comes_first(clients):
    web, batch, mobile, consumer = clients
    await backlog(batch, 600, tag="b")
    await backlog(mobile, 600, tag="m")
    urgent = (await web.submit("echo", {"data": "now"}, priority=5))["task_id"]
    order = await claims(consumer, 41)
    assert order[0]["task_id"] == urgent  # a higher priority runs before any share
    producers = [t["producer"] for t in order[1:]]
    # mobile (weight 3) gets three claims for each of batch's (weight 1), all along
    assert producers.count("mobile") == 30 and producers.count("batch") == 10
    for start in range(0, 40, 8):
        assert producers[start:start + 8].count("batch") == 2


async def test_a_producer_back_from_idle_neither_bursts_nor_waits(clients):
    web, batch, _, consumer = clients
    await backlog(batch, 1000)
    await web.submit("echo", {"data": "early"})
    first = await claims(consumer, 10)
    assert [t["producer"] for t in first].count("web") == 1
    await claims(consumer, 200, limit=10)  # web idle meanwhile: 200 of batch's run
    back = [(await web.submit("echo", {"data": i}))["task_id"] for i in range(6)]
    order = [t["task_id"] for t in await claims(consumer, 12)]
    # web's six come in turn with batch's, from the first claim on: no saved-up credit jumps
    # them all ahead, nor do they wait behind what batch queued while web was away
    assert sorted(order.index(task_id) for task_id in back) == [1, 3, 5, 7, 9, 11]


async def test_concurrent_fetches_share_fairly_and_never_double_lease(clients):
    web, batch, mobile, consumer = clients
    await backlog(batch, 300, tag="b")
    await backlog(web, 300, tag="w")
    got: list[dict] = []

    async def fetcher():
        for _ in range(6):
            tasks = await consumer.fetch(None, limit=5, wait_s=5)
            got.extend(tasks)
            await consumer.complete_many([(t["task_id"], t["lease"]["id"], {}) for t in tasks])

    await asyncio.gather(*(fetcher() for _ in range(8)))
    ids = [t["task_id"] for t in got]
    assert len(ids) == 240 and len(set(ids)) == 240
    producers = [t["producer"] for t in got]
    # claims overlap, so the exact turns vary; the shares do not: the first 240 of the line
    # are 120 of each producer's
    assert producers.count("web") == 120 and producers.count("batch") == 120


async def test_a_task_moved_to_another_priority_joins_that_line_at_its_head(clients):
    web, batch, _, consumer = clients
    await backlog(batch, 100, priority=5, tag="b")
    mine = [(await web.submit("echo", {"data": i}))["task_id"] for i in range(60)]
    await web.set_priority(mine[-1], 5)  # web's 60th in line at priority 0
    order = [t["task_id"] for t in await claims(consumer, 4)]
    # at priority 5 it is web's first task there: right behind the head, not 60 places back
    assert order.index(mine[-1]) == 1
