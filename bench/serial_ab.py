"""Serial mode, two checkouts side by side: what one task at a time costs in each, measured in the
same minutes. Prints each checkout's medians.

    python bench/serial_ab.py NAME=PATH NAME=PATH [--rounds 20] [--block 300] [--backend sqlite|postgres]

Each checkout runs its own stack from its own tree (task API + 2 echo consumers, concurrency 32,
INFO logs in JSON, as api_bench's serial mode). One producer (sync httpx, one create per call)
sends ``--block`` creates to one stack, waits for them to complete, then the next stack, the
order swapped every round, so that the box's slow and fast minutes fall on both alike: on the
shared 2-core machine two api_bench runs minutes apart differ by more than a change does.
Per round and stack: API and consumers' CPU per task (process CPU / tasks) and tasks/s (first
create to the block's last completion, as a 0.2 s poll of the database sees it: a little low, on
both alike); the create p50 over all rounds. A PATH is a git checkout (``git worktree add /tmp/base COMMIT``) whose
``python -m task_api`` and ``python -m consumer`` run with this interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from api_bench import cpu_seconds, pct, wait_completed  # noqa: E402
from support import api_process, consumer_process, wait_http  # noqa: E402

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def start(server, tree: str, log) -> None:
    env = {**os.environ, **server.env, "PYTHONUNBUFFERED": "1"}
    server.process = subprocess.Popen([sys.executable, "-m", server.module, *server.args], env=env, cwd=tree,
                                      start_new_session=True, stdout=log, stderr=log)
    wait_http(server.url + server.health_path, 30, server.process)


def fresh_postgres(name: str) -> str:
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trees", nargs=2, metavar="NAME=PATH")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=300, help="serial creates per stack per round")
    parser.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    tmp = Path(tempfile.mkdtemp(prefix="serial_ab_"))
    log = open(tmp / "servers.log", "ab")
    stacks: dict[str, dict] = {}
    try:
        for name, tree in trees.items():
            home = tmp / name
            home.mkdir()
            db = f"sqlite:///{home / 'bench.db'}" if args.backend == "sqlite" else fresh_postgres(f"serial_ab_{name}")
            api = api_process(db, home, TASKFLEET_LEASE_S="60", TASKFLEET_REAP_INTERVAL_S="1", TASKFLEET_LOG_LEVEL="warning")
            stacks[name] = {"api": api, "consumers": [], "db": db, "api_ms": [], "consumer_ms": [], "latency": [], "rate": []}
            start(api, tree, log)
            for i in range(2):
                consumer = consumer_process(api.url, home, "echo", TASKFLEET_CONCURRENCY=32, TASKFLEET_FETCH_WAIT_S=10,
                                            TASKFLEET_LOG_LEVEL="INFO", TASKFLEET_LOG_FORMAT="json",
                                            TASKFLEET_CONSUMER_ID=f"{name}{i}")
                stacks[name]["consumers"].append(consumer)
                start(consumer, tree, log)
            stacks[name]["http"] = httpx.Client(base_url=api.url, timeout=30, trust_env=False)
        for s in stacks.values():  # warm every connection and code path
            for _ in range(100):
                s["http"].post("/api/tasks", json={"workflow": "echo", "input": {"data": -1}}).raise_for_status()
        time.sleep(2)
        names = list(stacks)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                s = stacks[name]
                api0 = cpu_seconds(s["api"].process.pid)
                consumers0 = sum(cpu_seconds(c.process.pid) for c in s["consumers"])
                ids = []
                started = time.perf_counter()
                for i in range(args.block):
                    t = time.perf_counter()
                    response = s["http"].post("/api/tasks", json={"workflow": "echo", "input": {"data": i}})
                    s["latency"].append((time.perf_counter() - t) * 1000)
                    ids.append(response.json()["task_id"])
                wait_completed(s["db"], ids)
                elapsed = time.perf_counter() - started
                s["api_ms"].append(1000 * (cpu_seconds(s["api"].process.pid) - api0) / args.block)
                s["consumer_ms"].append(1000 * (sum(cpu_seconds(c.process.pid) for c in s["consumers"]) - consumers0) / args.block)
                s["rate"].append(args.block / elapsed)
        for name, s in stacks.items():
            print(json.dumps({
                "tree": name, "path": trees[name], "backend": args.backend, "rounds": args.rounds, "block": args.block,
                "api_cpu_ms_per_task": round(statistics.median(s["api_ms"]), 3),
                "consumer_cpu_ms_per_task": round(statistics.median(s["consumer_ms"]), 3),
                "cpu_ms_per_task": round(statistics.median([a + c for a, c in zip(s["api_ms"], s["consumer_ms"])]), 3),
                "create_p50_ms": round(pct(s["latency"], 50), 3),
                "e2e_tasks_per_s": round(statistics.median(s["rate"]), 1),
            }), flush=True)
    finally:
        for s in stacks.values():
            for consumer in s["consumers"]:
                consumer.terminate()
            s["api"].terminate()
            if "http" in s:
                s["http"].close()
        log.close()


if __name__ == "__main__":
    main()
