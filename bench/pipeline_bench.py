"""Pipeline overhead benchmark, on SQLite and Postgres. Prints its figures.

  python bench/pipeline_bench.py [--backend sqlite|postgres|both] [--items 100] [--rounds 5]

A 3-stage echo pipeline (echo_fanout: one task, a map of N items, one task) against the same
work as N+2 independent echo tasks in the same three waves (each wave submitted once the one
before it completed). Consumers (4 coroutines, fetch limit 8, completions through the batch
route as the consumer runtime sends them) are the same for both. Figures: wall time of each,
the difference per stage task (the pipeline's added latency), and the API process's CPU per
stage task beside a plain task's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import api_process, postgres_database  # noqa: E402
from taskfleet.client import ConsumerClient, ProducerClient  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 10 ms


class Completed:
    """Ids the bench's consumers completed, and a wait for a set of them."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.changed = asyncio.Event()

    def add(self, ids: list[str]) -> None:
        self.ids.update(ids)
        self.changed.set()

    async def wait_for(self, ids: set[str]) -> None:
        while not ids <= self.ids:
            self.changed.clear()
            await self.changed.wait()


async def consume(url: str, stop: asyncio.Event, n: int, completed: Completed) -> None:
    async with ConsumerClient(url, consumer_id=f"bench{n}") as c:
        while not stop.is_set():
            tasks = await c.fetch(["echo"], limit=8, wait_s=0.2)
            if tasks:
                await c.complete_many([(t["task_id"], t["lease"]["id"], {"data": t["input"]["data"]}) for t in tasks])
                completed.add([t["task_id"] for t in tasks])


async def pipeline_once(producer: ProducerClient, completed: Completed, words: list[str]) -> None:
    # /process returns when the pipeline completes (an in-process signal, no polling)
    answer = await producer.process("echo-fanout", {"words": words}, wait_s=300)
    assert answer.status_code == 200, answer.text


async def plain_once(producer: ProducerClient, completed: Completed, words: list[str]) -> None:
    for wave in ([words], words, [words]):
        created = await producer.submit_many([{"workflow": "echo", "input": {"data": w}} for w in wave])
        await completed.wait_for({t["task_id"] for t in created})


async def measure(url: str, pid: int, items: int, rounds: int) -> dict:
    words = [f"w{i}" for i in range(items)]
    stop = asyncio.Event()
    completed = Completed()
    workers = [asyncio.create_task(consume(url, stop, n, completed)) for n in range(4)]
    figures: dict[str, list[float]] = {"pipeline": [], "plain": [], "pipeline_cpu": [], "plain_cpu": []}
    try:
        async with ProducerClient(url) as producer:
            await pipeline_once(producer, completed, words[:3])  # warm both paths up
            await plain_once(producer, completed, words[:3])
            for _ in range(rounds):
                for kind, once in (("pipeline", pipeline_once), ("plain", plain_once)):
                    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                    await once(producer, completed, words)
                    figures[kind].append(time.perf_counter() - t0)
                    figures[f"{kind}_cpu"].append(cpu_seconds(pid) - cpu0)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    tasks = items + 2
    pipeline, plain = statistics.median(figures["pipeline"]), statistics.median(figures["plain"])
    return {
        "pipeline_wall_s": round(pipeline, 3),
        "plain_wall_s": round(plain, 3),
        "added_ms_per_stage_task": round(1000 * (pipeline - plain) / tasks, 2),
        "api_cpu_ms_per_stage_task": round(1000 * statistics.median(figures["pipeline_cpu"]) / tasks, 2),
        "api_cpu_ms_per_plain_task": round(1000 * statistics.median(figures["plain_cpu"]) / tasks, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = {"TASKFLEET_LOG_LEVEL": "warning"}
    for backend in (["sqlite", "postgres"] if args.backend == "both" else [args.backend]):
        with tempfile.TemporaryDirectory() as tmp:
            if backend == "sqlite":
                with api_process(f"sqlite:///{tmp}/bench.db", Path(tmp), **env) as server:
                    result = asyncio.run(measure(server.url, server.process.pid, args.items, args.rounds))
            else:
                with postgres_database() as url, api_process(url, Path(tmp), **env) as server:
                    result = asyncio.run(measure(server.url, server.process.pid, args.items, args.rounds))
        print(f"{backend}: " + "  ".join(f"{k}={v}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
