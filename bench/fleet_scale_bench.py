"""Fleet scale: what 1,000 parked consumers cost one API replica (and two) on Postgres. Prints its figures.

  python bench/fleet_scale_bench.py [--consumers 1000] [--compare 100] [--idle-s 20] [--wait-s 10]
                                    [--pickup-n 1000] [--rate 100] [--replicas 1,2]

One client process holds every consumer's long poll over real HTTP (aiohttp, one connection
each), each consumer asking for its own mix of workflows: ``echo`` and 0-3 of the others, so the
mixes differ. ``--wait-s`` is the consumer runtime's default fetch wait (10 s). For each replica
count (the consumers split round-robin between the replicas):

- idle: API CPU (% of one core, each replica) and database transactions/s (``pg_stat_database``
  ``xact_commit`` of the bench's own database, read from another database so the reads do not
  count), first with ``--compare`` consumers, then with ``--consumers``: the polls/s grow with the
  fleet, the database's work should not;
- pickup: a producer creates echo tasks at ``--rate``/s (open loop, alternating replicas) while
  the whole fleet stays parked; create-call start -> task in a consumer's hands, p50 / p99.

The machine is shared with other work: run it more than once and read the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

from support import PG_ADMIN_URL, api_process, postgres_database  # noqa: E402
from taskfleet.client import ProducerClient  # noqa: E402

try:
    import uvloop

    new_loop = uvloop.new_event_loop
except ImportError:  # pragma: no cover
    new_loop = asyncio.new_event_loop

OTHERS = ["face_swap", "image_gen", "tts", "video_compose", "video_segments"]


def run(coro):
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mixes(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [["echo", *rng.sample(OTHERS, rng.randint(0, 3))] for _ in range(n)]


# -- the fleet: one process, n long polls ------------------------------------------------------------
def fleet_proc(urls: list[str], n: int, wait_s: float, seed: int, polls, stop, out: mp.Queue) -> None:
    async def main():
        latencies: list[float] = []
        errors = 0
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=wait_s + 30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            pending: set[asyncio.Task] = set()

            async def complete(url: str, task: dict) -> None:
                body = {"lease_id": task["lease"]["id"], "output": {}}
                async with http.post(f"{url}/api/comm/task/{task['task_id']}/complete", json=body) as r:
                    await r.read()

            async def consumer(i: int, mix: list[str]) -> None:
                nonlocal errors
                url = urls[i % len(urls)]
                params = [("workflow", w) for w in mix]
                params += [("consumer_id", f"fleet{seed}-{i}"), ("host", "bench"), ("limit", "1"), ("wait_s", str(wait_s))]
                while not stop.is_set():
                    async with http.get(f"{url}/api/comm/task/fetch", params=params) as r:
                        got = time.time()
                        body = await r.read()
                        polls.value += 1
                    if r.status == 200:
                        for task in json.loads(body)["tasks"]:
                            data = task["input"]["data"]
                            if isinstance(data, dict) and "t" in data:
                                latencies.append((got - data["t"]) * 1000)
                            # Completed beside the poll, as the consumer runtime does.
                            done = asyncio.create_task(complete(url, task))
                            pending.add(done)
                            done.add_done_callback(pending.discard)
                    elif r.status != 204:
                        errors += 1
                        await asyncio.sleep(1)

            workers = [asyncio.create_task(consumer(i, mix)) for i, mix in enumerate(mixes(n, seed))]
            while not stop.is_set():
                await asyncio.sleep(0.1)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, *pending, return_exceptions=True)
        out.put({"latencies": latencies, "errors": errors})

    run(main())


class Fleet:
    def __init__(self, urls: list[str], n: int, wait_s: float, seed: int) -> None:
        self.polls = mp.Value("l", 0, lock=False)
        self.stop = mp.Event()
        self.out: mp.Queue = mp.Queue()
        self.n = n
        self.proc = mp.Process(target=fleet_proc, args=(urls, n, wait_s, seed, self.polls, self.stop, self.out))
        self.proc.start()

    def parked(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.polls.value < self.n:  # every consumer's first poll answered (204 after wait_s)
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.polls.value} of {self.n} first polls answered")
            time.sleep(0.2)

    def close(self) -> dict:
        self.stop.set()
        result = self.out.get(timeout=120)
        self.proc.join()
        return result


# -- measurements ------------------------------------------------------------------------------------
async def commits(database: str) -> int:
    conn = await asyncpg.connect(PG_ADMIN_URL)  # another database: these reads are not counted
    try:
        return await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database)
    finally:
        await conn.close()


def idle(servers, fleet: Fleet, database: str, seconds: float) -> dict:
    time.sleep(1.5)  # pg_stat_database is flushed about once a second
    cpu0 = [cpu_seconds(s.process.pid) for s in servers]
    x0, p0, t0 = run(commits(database)), fleet.polls.value, time.time()
    time.sleep(seconds)
    cpu1 = [cpu_seconds(s.process.pid) for s in servers]
    x1, p1, t1 = run(commits(database)), fleet.polls.value, time.time()
    span = t1 - t0
    return {
        "consumers": fleet.n,
        "polls_per_s": round((p1 - p0) / span, 1),
        "api_cpu_pct_of_one_core": [round(100 * (b - a) / span, 2) for a, b in zip(cpu0, cpu1)],
        "db_xact_per_s": round((x1 - x0) / span, 2),
    }


def pickup(urls: list[str], n: int, rate: float) -> None:
    async def produce():
        producers = [ProducerClient(url) for url in urls]
        try:
            for i in range(20):  # warm connections (their tasks count too; a few among 1,000)
                await producers[i % len(urls)].submit("echo", {"data": {"i": -1, "t": time.time()}})
            start = time.perf_counter()
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await producers[i % len(urls)].submit("echo", {"data": {"i": i, "t": time.time()}})
            await asyncio.sleep(1.0)  # the last tasks reach their consumers
        finally:
            for p in producers:
                await p.aclose()

    run(produce())


def bench(replicas: int, args, tmp: Path) -> dict:
    env = {"TASKFLEET_LEASE_S": "60", "TASKFLEET_REAP_INTERVAL_S": "1", "TASKFLEET_LOG_LEVEL": "warning"}
    result: dict = {"replicas": replicas}
    with postgres_database() as url, ExitStack() as stack:
        database = url.rsplit("/", 1)[1]
        servers = [stack.enter_context(api_process(url, tmp / f"r{replicas}-{i}", **env)) for i in range(replicas)]
        urls = [s.url for s in servers]
        small = Fleet(urls, args.compare, args.wait_s, seed=1)
        small.parked()
        result["idle_small"] = idle(servers, small, database, args.idle_s)
        small.close()
        fleet = Fleet(urls, args.consumers, args.wait_s, seed=2)
        fleet.parked()
        result["idle"] = idle(servers, fleet, database, args.idle_s)
        cpu0 = [cpu_seconds(s.process.pid) for s in servers]
        t0 = time.time()
        pickup(urls, args.pickup_n, args.rate)
        span = time.time() - t0
        result["pickup_api_cpu_pct_of_one_core"] = [
            round(100 * (cpu_seconds(s.process.pid) - c) / span, 1) for s, c in zip(servers, cpu0)
        ]
        got = fleet.close()
        latencies = got["latencies"]
        result["pickup"] = {
            "rate_per_s": args.rate, "tasks": len(latencies), "errors": got["errors"],
            "p50_ms": round(pct(latencies, 50), 2), "p99_ms": round(pct(latencies, 99), 2),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consumers", type=int, default=1000)
    parser.add_argument("--compare", type=int, default=100)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--wait-s", type=float, default=10.0)
    parser.add_argument("--pickup-n", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--replicas", default="1,2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for replicas in (int(r) for r in args.replicas.split(",")):
            print(json.dumps(bench(replicas, args, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
