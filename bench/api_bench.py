"""Task API benchmark: no-op tasks through HTTP, on SQLite and Postgres. Prints its figures.

  python bench/api_bench.py [--backend sqlite|postgres|both] [--only throughput,pickup,claim,idle,events,serial,fairshare]

- throughput: producers (2, each with 8 create requests in flight) create N echo tasks while
  consumers (2) fetch (limit 20) and complete them; tasks/s from the first create to the last
  completion. Modes: mixed (one create request per task, as Celery's producer sends one message
  per task; one complete request per fetch, as the consumer runtime's completion batcher does),
  single (also one complete request per task, one after another), batched (both through the
  batch routes).
- pickup: one producer creates 100 tasks/s (open loop); a long-polling consumer notes when
  each arrives: create-call start → task in the consumer's hands, p50 / p99.
- claim (Postgres): fetch latency with 1k and with 1M tasks queued.
- fairshare (Postgres): fetch latency with 1M tasks queued, spread over 1, 10 and 1,000
  producers (fair share within the priority), each on a fresh database; the ratio to 1 producer.
- idle: CPU of the API process while 500 consumers long-poll an empty queue.
- serial: what one task at a time costs. One producer (sync httpx, one create per call, back
  to back) and real consumer processes (``python -m consumer``, echo, concurrency 32): e2e
  tasks/s, the API's and the consumers' CPU per task (process CPU time / tasks), the create
  p50 with no consumers and with consumers busy, and the pickup p50 of creates at 100/s
  (create call start → the consumer's lease, by the database's ``started_at``). For a peer
  figure run the Celery peer bench beside it with the same shape (one producer, --preload 0).
- events: CPU of the API process while 500 event streams (GET /api/tasks/{id}/events, one per
  PENDING task) stay open and nothing changes: keep-alives and the replica's shared recheck only.
Each client process runs its own event loop, as separate consumer processes would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx  # noqa: E402

from support import ROOT, api_process, consumer_process, postgres_database, wait_http  # noqa: E402
from taskfleet.client import ConsumerClient, ProducerClient  # noqa: E402

try:
    import uvloop

    new_loop = uvloop.new_event_loop
except ImportError:  # pragma: no cover
    new_loop = asyncio.new_event_loop


def run(coro):
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# -- throughput -------------------------------------------------------------------------------
def producer_proc(url: str, n: int, concurrency: int, batch: int, out: mp.Queue) -> None:
    async def main():
        first = time.time()
        async with ProducerClient(url) as p:
            sem = asyncio.Semaphore(concurrency)

            async def one(i):
                async with sem:
                    if batch > 1:
                        await p.submit_many([{"workflow": "echo", "input": {"data": j}} for j in range(i, i + batch)])
                    else:
                        await p.submit("echo", {"data": i})

            await asyncio.gather(*(one(i) for i in range(0, n, max(1, batch))))
        out.put(("produced", first, time.time()))

    run(main())


def consumer_proc(url: str, limit: int, batch: bool, out: mp.Queue) -> None:
    async def main():
        done, last = 0, 0.0
        async with ConsumerClient(url) as c:
            idle = 0
            while idle < 3:
                tasks = await c.fetch(["echo"], limit=limit, wait_s=1)
                if not tasks:
                    idle += 1
                    continue
                idle = 0
                if batch:
                    # What a fetch gave goes back in one request; tasks that arrive meanwhile
                    # wait for the next fetch, which so takes more at once.
                    await c.complete_many([(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]}) for t in tasks])
                else:
                    for t in tasks:
                        await c.complete(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]})
                done += len(tasks)
                last = time.time()
        out.put(("consumed", done, last))

    run(main())


def throughput(
    url: str, n: int, producers: int, concurrency: int, consumers: int, limit: int, batch: int, batch_complete: bool
) -> dict:
    """Producers create ``batch`` tasks per request (1: one per request, as Celery's producer
    sends one message per task); consumers complete one task per request, or
    (``batch_complete``) what each fetch gave them in one request."""
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=consumer_proc, args=(url, limit, batch_complete, out)) for _ in range(consumers)]
    procs += [mp.Process(target=producer_proc, args=(url, n // producers, concurrency, batch, out)) for _ in range(producers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    first = min(r[1] for r in results if r[0] == "produced")
    produced_end = max(r[2] for r in results if r[0] == "produced")
    done = sum(r[1] for r in results if r[0] == "consumed")
    last = max(r[2] for r in results if r[0] == "consumed")
    return {
        "tasks": done,
        "e2e_tasks_per_s": round(done / (last - first), 1),
        "create_per_s": round(n / (produced_end - first), 1),
        "producers": producers,
        "requests_in_flight_per_producer": concurrency,
        "consumers": consumers,
        "fetch_limit": limit,
        "batch": batch,
        "batch_complete": batch_complete,
    }


# -- pickup latency -----------------------------------------------------------------------------
def pickup_consumer(url: str, n: int, out: mp.Queue) -> None:
    async def main():
        seen = {}
        completing: set[asyncio.Task] = set()
        async with ConsumerClient(url) as c:
            while len(seen) < n:
                for t in await c.fetch(["echo"], limit=10, wait_s=5):
                    seen[t["input"]["data"]["i"]] = (t["input"]["data"]["t"], time.time())
                    # Completed beside the fetch loop, as the consumer runtime does, so the next
                    # fetch is parked again at once rather than after this task's complete.
                    task = asyncio.create_task(c.complete(t["task_id"], t["lease"]["id"], {}))
                    completing.add(task)
                    task.add_done_callback(completing.discard)
            await asyncio.gather(*completing)
        out.put([(got - sent) * 1000 for sent, got in seen.values()])

    run(main())


def pickup(url: str, n: int, rate: float) -> dict:
    out: mp.Queue = mp.Queue()
    proc = mp.Process(target=pickup_consumer, args=(url, n, out))
    proc.start()
    time.sleep(1.0)

    async def produce():
        async with ProducerClient(url) as p:
            for _ in range(20):  # warm connections
                await p.submit("echo", {"data": {"i": -1, "t": time.time()}})
            start = time.perf_counter()
            for i in range(n):
                target = start + i / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await p.submit("echo", {"data": {"i": i, "t": time.time()}})

    run(produce())
    latencies = out.get(timeout=120)
    proc.join()
    return {
        "rate_per_s": rate,
        "n": n,
        "pickup_p50_ms": round(pct(latencies, 50), 2),
        "pickup_p99_ms": round(pct(latencies, 99), 2),
    }


# -- claim latency with a deep queue (Postgres) ---------------------------------------------------
async def fill_postgres(db_url: str, n: int, first: int = 1) -> None:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """
            INSERT INTO tasks (id, workflow, status, input, priority, max_attempts, timeout_s,
                               metadata, not_before, created_at, updated_at)
            SELECT 'tsk_fill_' || g, 'echo', 'PENDING', '{"data": null, "sleep_s": 0, "fail": null}',
                   0, 3, 600, '{}', 0, extract(epoch from now()), extract(epoch from now())
            FROM generate_series($2::bigint, $2::bigint + $1 - 1) AS g
            """,
            n,
            first,
        )
        await conn.execute("ANALYZE tasks")
    finally:
        await conn.close()


async def claim_latency(url: str, samples: int) -> dict:
    times = []
    async with ConsumerClient(url) as c:
        for _ in range(20):
            [t] = await c.fetch(["echo"], wait_s=0)
            await c.complete(t["task_id"], t["lease"]["id"], {})
        for _ in range(samples):
            start = time.perf_counter()
            [t] = await c.fetch(["echo"], wait_s=0)
            times.append((time.perf_counter() - start) * 1000)
            await c.complete(t["task_id"], t["lease"]["id"], {})
    return {"claim_p50_ms": round(pct(times, 50), 3), "claim_p99_ms": round(pct(times, 99), 3)}


# -- fair share: the claim with many producers waiting ---------------------------------------------
async def fill_producers(db_url: str, n: int, producers: int) -> None:
    """n PENDING tasks spread over ``producers`` producers in turn, with the fair-share keys
    their creates would have taken (weight 1: a producer's k-th waiting task has key k)."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """
            INSERT INTO tasks (id, workflow, status, input, priority, max_attempts, timeout_s,
                               metadata, not_before, created_at, updated_at, producer, fair_key)
            SELECT 'tsk_fill_' || g, 'echo', 'PENDING', '{"data": null, "sleep_s": 0, "fail": null}',
                   0, 3, 600, '{}', 0, extract(epoch from now()), extract(epoch from now()),
                   'p' || (g % $2), g / $2
            FROM generate_series(0, $1 - 1) AS g
            """,
            n,
            producers,
        )
        await conn.execute("ANALYZE tasks")
    finally:
        await conn.close()


def fair_share_claims(tmp_path: Path, env: dict, queued: int, counts: list[int], samples: int) -> dict:
    """Claim p50/p99 through the API on Postgres with ``queued`` tasks waiting, spread over each
    number of producers in ``counts``, each on a fresh database."""
    found: dict = {}
    for count in counts:
        with postgres_database() as db_url, api_process(db_url, tmp_path, **env) as server:
            run(fill_producers(db_url, queued, count))
            found[f"{count}_producers"] = run(claim_latency(server.url, samples))
    base = found[f"{counts[0]}_producers"]["claim_p50_ms"]
    for count in counts:
        found[f"{count}_producers"]["vs_first"] = round(found[f"{count}_producers"]["claim_p50_ms"] / base, 3)
    return found


# -- the machine's HTTP floor, for context --------------------------------------------------------
async def http_floor(server, n: int = 2000) -> dict:
    """GET /health (an empty route) from one client: what one request costs on this machine
    right now. The shared 2-core box varies several-fold over a day; read the task figures
    against this."""
    times = []
    async with httpx.AsyncClient(base_url=server.url) as http:
        for _ in range(100):
            await http.get("/health")
        cpu0 = cpu_seconds(server.process.pid)
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            await http.get("/health")
            times.append((time.perf_counter() - t) * 1000)
        elapsed = time.perf_counter() - start
    return {
        "floor_req_per_s": round(n / elapsed, 1),
        "floor_p50_ms": round(pct(times, 50), 3),
        "floor_server_cpu_us_per_req": round(1e6 * (cpu_seconds(server.process.pid) - cpu0) / n, 1),
    }


# -- idle long-pollers ---------------------------------------------------------------------------
def idle_pollers(url: str, n: int, seconds: float, out: mp.Queue) -> None:
    async def main():
        limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
            stop = time.time() + seconds

            async def poller(i):
                while time.time() < stop:
                    await http.get("/api/comm/task/fetch", params={"workflow": "echo", "wait_s": 20, "consumer_id": f"idle{i}"})

            await asyncio.gather(*(poller(i) for i in range(n)))
        out.put("done")

    run(main())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(server, n: int, seconds: float) -> dict:
    out: mp.Queue = mp.Queue()
    proc = mp.Process(target=idle_pollers, args=(server.url, n, seconds + 25, out))
    proc.start()
    time.sleep(5)  # all pollers parked
    c0, t0 = cpu_seconds(server.process.pid), time.time()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(server.process.pid), time.time()
    proc.terminate()
    proc.join()
    return {"idle_pollers": n, "api_cpu_pct_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2)}


# -- idle event streams --------------------------------------------------------------------------
def event_streams(url: str, ids: list[str], seconds: float, out: mp.Queue) -> None:
    async def main():
        limits = httpx.Limits(max_connections=len(ids) + 10, max_keepalive_connections=len(ids) + 10)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=None) as http:
            opened = 0

            async def stream(task_id):
                nonlocal opened
                async with http.stream("GET", f"/api/tasks/{task_id}/events") as response:
                    async for line in response.aiter_lines():
                        if line.startswith("event: task"):
                            opened += 1
                            if opened == len(ids):
                                out.put("open")

            readers = [asyncio.create_task(stream(i)) for i in ids]
            await asyncio.sleep(seconds)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    run(main())


def events_cpu(server, n: int, seconds: float) -> dict:
    async def create() -> list[str]:
        async with ProducerClient(server.url) as producer:
            tasks = []
            for start in range(0, n, 100):
                tasks += await producer.submit_many([{"workflow": "echo", "input": {"data": i}} for i in range(start, min(n, start + 100))])
            return [t["task_id"] for t in tasks]

    ids = run(create())
    out: mp.Queue = mp.Queue()
    proc = mp.Process(target=event_streams, args=(server.url, ids, seconds + 60, out))
    proc.start()
    out.get(timeout=60)  # every stream has its first event
    time.sleep(2)
    c0, t0 = cpu_seconds(server.process.pid), time.time()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(server.process.pid), time.time()
    proc.terminate()
    proc.join()
    return {"open_streams": n, "api_cpu_pct_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2)}


# -- serial: one task at a time through real consumers ------------------------------------------
def serial_creates(url: str, n: int, rate: float | None = None) -> list[tuple[str, float, float]]:
    """``n`` creates from one sync client, one per call, back to back (or ``rate`` per second,
    open loop): (task id, wall time the call started, its latency in ms) for each."""
    out = []
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        for _ in range(20):  # warm the connection
            http.post("/api/tasks", json={"workflow": "echo", "input": {"data": -1}}).raise_for_status()
        start = time.perf_counter()
        for i in range(n):
            if rate is not None:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sent, t = time.time(), time.perf_counter()
            response = http.post("/api/tasks", json={"workflow": "echo", "input": {"data": i}})
            latency = (time.perf_counter() - t) * 1000
            response.raise_for_status()
            out.append((response.json()["task_id"], sent, latency))
    return out


def task_times(db_url: str, ids: list[str]) -> dict[str, tuple]:
    """(status, created_at, started_at, finished_at) of each task, read from the database."""
    query = "SELECT id, status, created_at, started_at, finished_at FROM tasks WHERE id = ANY($1)"
    if db_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(db_url.split(":///", 1)[1])
        try:
            rows = []
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                rows += conn.execute(query.replace("= ANY($1)", f"IN ({','.join('?' * len(chunk))})"), chunk).fetchall()
        finally:
            conn.close()
    else:
        import asyncpg

        async def read():
            conn = await asyncpg.connect(db_url)
            try:
                return [tuple(r) for r in await conn.fetch(query, ids)]
            finally:
                await conn.close()

        rows = run(read())
    return {r[0]: r[1:] for r in rows}


def wait_completed(db_url: str, ids: list[str], timeout_s: float = 300) -> dict[str, tuple]:
    deadline = time.monotonic() + timeout_s
    while True:
        times = task_times(db_url, ids)
        if sum(1 for t in times.values() if t[0] == "COMPLETED") == len(ids):
            return times
        if time.monotonic() > deadline:
            raise TimeoutError("serial bench: tasks did not complete")
        time.sleep(0.2)


class Consumers:
    """Real consumer processes (``python -m consumer``), their output in a file."""

    def __init__(self, url: str, tmp_path: Path, count: int, concurrency: int, log_level: str) -> None:
        self.servers = [
            consumer_process(url, tmp_path, "echo", TASKFLEET_CONCURRENCY=concurrency, TASKFLEET_FETCH_WAIT_S=10,
                             TASKFLEET_LOG_LEVEL=log_level, TASKFLEET_LOG_FORMAT="json", TASKFLEET_CONSUMER_ID=f"serial{i}")
            for i in range(count)
        ]
        self._log = open(tmp_path / "consumers.log", "ab")

    def __enter__(self) -> "Consumers":
        for s in self.servers:
            env = {**os.environ, **s.env, "PYTHONUNBUFFERED": "1"}
            s.process = subprocess.Popen([sys.executable, "-m", "consumer"], env=env, cwd=ROOT,
                                         stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        for s in self.servers:
            wait_http(s.url + s.health_path, 30, s.process)
        return self

    def cpu(self) -> float:
        return sum(cpu_seconds(s.process.pid) for s in self.servers)

    def __exit__(self, *exc: object) -> None:
        for s in self.servers:
            s.terminate()
        self._log.close()


def serial(server, db_url: str, tmp_path: Path, args) -> dict:
    """One producer, one create per call, back to back, through real consumers; see the module doc."""
    idle = serial_creates(server.url, 300)  # no consumer yet: what a create costs on its own
    result: dict = {"tasks": args.serial_n, "consumers": args.consumers, "concurrency": args.serial_concurrency,
                    "create_p50_ms_no_consumers": round(pct([c[2] for c in idle], 50), 3)}
    with Consumers(server.url, tmp_path, args.consumers, args.serial_concurrency, args.consumer_log_level) as consumers:
        wait_completed(db_url, [c[0] for c in idle])
        time.sleep(1)
        profilers = [
            subprocess.Popen(["py-spy", "record", "-p", str(pid), "-f", "raw", "-r", "500", "-o",
                              str(Path(args.py_spy) / f"{name}.{os.getpid()}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in [("api", server.process.pid)] + [(f"consumer{i}", s.process.pid) for i, s in enumerate(consumers.servers)]
        ] if args.py_spy else []
        time.sleep(1 if profilers else 0)
        api0, csm0 = cpu_seconds(server.process.pid), consumers.cpu()
        creates = serial_creates(server.url, args.serial_n)
        times = wait_completed(db_url, [c[0] for c in creates])
        api1, csm1 = cpu_seconds(server.process.pid), consumers.cpu()
        for profiler in profilers:
            profiler.send_signal(2)  # SIGINT: py-spy writes its file and exits
            profiler.wait(30)
        n = len(creates) + 20  # the warm-up creates were served too
        first = min(c[1] for c in creates)
        last = max(t[3] for t in times.values())
        paced = serial_creates(server.url, args.pickup_n, rate=100.0)
        paced_times = wait_completed(db_url, [c[0] for c in paced])
    leased = [(paced_times[tid][2] - sent) * 1000 for tid, sent, _ in paced]
    result.update({
        "e2e_tasks_per_s": round(len(creates) / (last - first), 1),
        "api_cpu_ms_per_task": round(1000 * (api1 - api0) / n, 3),
        "consumer_cpu_ms_per_task": round(1000 * (csm1 - csm0) / n, 3),
        "cpu_ms_per_task": round(1000 * (api1 - api0 + csm1 - csm0) / n, 3),
        "create_p50_ms_consumers_busy": round(pct([c[2] for c in creates], 50), 3),
        "create_p99_ms_consumers_busy": round(pct([c[2] for c in creates], 99), 3),
        # Create call start → the lease's start in the database: a hand-off leases at the
        # insert, so this is not when the consumer holds it; the pickup section measures that.
        "leased_100_per_s_p50_ms": round(pct(leased, 50), 2),
    })
    # Pickup (the task in a long-polling consumer's hands) at 100/s, measured as the pickup
    # section does, once the serial consumers are gone.
    result["pickup_100_per_s"] = pickup(server.url, args.pickup_n, 100.0)
    return result


def bench_backend(backend: str, only: set[str], args) -> dict:
    results: dict = {"backend": backend}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)

        def with_db(fn):
            if backend == "sqlite":
                return fn(f"sqlite:///{tmp_path / 'bench.db'}")
            with postgres_database() as url:
                return fn(url)

        env = {"TASKFLEET_LEASE_S": "60", "TASKFLEET_REAP_INTERVAL_S": "1", "TASKFLEET_LOG_LEVEL": "warning"}

        def sections(db_url: str) -> None:
            with api_process(db_url, tmp_path, **env) as server:
                results["http_floor"] = run(http_floor(server))
                # single: one create and one complete request per task; mixed: one create per
                # task, one complete request per fetch; batched: both in bulk.
                modes = (("mixed", 1, True), ("single", 1, False), ("batched", args.batch, True))
                for name, batch, batch_complete in modes:
                    if name not in args.modes.split(",") or "throughput" not in only:
                        continue
                    mode = f"throughput_{name}"
                    cpu0 = cpu_seconds(server.process.pid)
                    results[mode] = throughput(
                        server.url, args.n, args.producers, args.concurrency, args.consumers, args.limit, batch,
                        batch_complete,
                    )
                    # CPU time, unlike wall time, holds up on a machine shared with other work.
                    results[mode]["api_cpu_ms_per_task"] = round(
                        1000 * (cpu_seconds(server.process.pid) - cpu0) / results[mode]["tasks"], 3)
                if "serial" in only:
                    results["serial"] = serial(server, db_url, tmp_path, args)
                if "pickup" in only:
                    results["pickup"] = pickup(server.url, args.pickup_n, 100.0)
                if "idle" in only:
                    results["idle"] = idle_cpu(server, 500, 20.0)
                if "events" in only:
                    results["events"] = events_cpu(server, 500, 20.0)
                if "claim" in only and backend == "postgres":
                    run(fill_postgres(db_url, 1000))
                    results["claim_1k_queued"] = run(claim_latency(server.url, 300))
                    run(fill_postgres(db_url, 1_000_000 - 1000, first=1001))
                    results["claim_1m_queued"] = run(claim_latency(server.url, 300))

        with_db(sections)
        if "fairshare" in only and backend == "postgres":
            results["fair_share_claim_1m_queued"] = fair_share_claims(tmp_path, env, args.fair_queued, [1, 10, 1000], 300)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="both", choices=["sqlite", "postgres", "both"])
    parser.add_argument("--only", default="throughput,pickup,claim,idle,events,serial,fairshare")
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="create requests in flight per producer")
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--pickup-n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50, help="tasks per create request in the batched run")
    parser.add_argument("--modes", default="mixed,single,batched")
    parser.add_argument("--serial-n", type=int, default=2000, help="tasks the serial producer creates")
    parser.add_argument("--serial-concurrency", type=int, default=32, help="TASKFLEET_CONCURRENCY of each serial consumer")
    parser.add_argument("--py-spy", metavar="DIR", help="record py-spy raw profiles of the API and consumers in the serial run")
    parser.add_argument("--consumer-log-level", default="INFO", help="the serial consumers' TASKFLEET_LOG_LEVEL")
    parser.add_argument("--fair-queued", type=int, default=1_000_000, help="tasks waiting in the fair-share claim section")
    args = parser.parse_args()
    only = set(args.only.split(","))
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        print(json.dumps(bench_backend(backend, only, args)), flush=True)


if __name__ == "__main__":
    main()
