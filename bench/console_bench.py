"""The operator console's queries at scale: 1M tasks on Postgres, timed over HTTP. Prints its figures.

  python bench/console_bench.py [--tasks 1000000] [--requests 200]

Loads the tasks in one INSERT ... SELECT FROM generate_series (four workflows; 90% COMPLETED, 4%
FAILED, 1% CANCELLED, 4% PENDING, 1% PROCESSING; a task a second of history), ANALYZEs, starts
a real API on that database, and times each route with one keep-alive client, sequentially:

- list: the newest page (`GET /api/tasks?limit=50`), and a page 100 pages deep by its cursor
- filtered: by workflow and status, common (COMPLETED) and rare (PROCESSING) combinations
- stats: `GET /api/stats` where the API has it (reported as missing otherwise)
- metrics: `GET /metrics` (counts by workflow and status, oldest pending by workflow)

The database is the bench's own, dropped at the end.
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

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from support import api_process, postgres_database  # noqa: E402

WORKFLOWS = ("echo", "face_swap", "image_gen", "tts")

# Status by g % 100: the mix of a queue that has run for a while.
LOAD = """
INSERT INTO tasks (id, workflow, status, input, max_attempts, timeout_s, attempts, created_at, updated_at,
                   started_at, finished_at, output, error)
SELECT 'tsk_bench' || lpad(g::text, 9, '0'),
       (ARRAY['echo', 'face_swap', 'image_gen', 'tts'])[1 + g % 4],
       s.status,
       '{"data": 1}', 3, 600, CASE WHEN s.status = 'PENDING' THEN 0 ELSE 1 END,
       $2 - ($1 - g), $2 - ($1 - g) + 1,
       CASE WHEN s.status = 'PENDING' THEN NULL ELSE $2 - ($1 - g) + 0.5 END,
       CASE WHEN s.status IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN $2 - ($1 - g) + 1 END,
       CASE WHEN s.status = 'COMPLETED' THEN '{"data": 1}' END,
       CASE WHEN s.status = 'FAILED' THEN '{"code": "echo_fatal", "message": "bench"}' END
FROM generate_series(1, $1) AS g
CROSS JOIN LATERAL (SELECT CASE
    WHEN g % 100 < 90 THEN 'COMPLETED' WHEN g % 100 < 94 THEN 'FAILED' WHEN g % 100 < 95 THEN 'CANCELLED'
    WHEN g % 100 < 99 THEN 'PENDING' ELSE 'PROCESSING' END AS status) AS s
"""


async def plans(url: str, cases: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    """The list statement's plan for each case, planned per call as the API runs it: its scan,
    and whether rows are filtered after it."""
    from task_api.store import sql

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql.PLAN_EACH_CALL.replace("SET LOCAL", "SET"))
        out = []
        for i, (name, params) in enumerate(cases):
            statement = sql.LIST_TASKS["status" in params, "workflow" in params, "cursor" in params]
            text, names = sql.postgres(statement)
            await conn.execute(f"PREPARE q{i} AS {text}")
            values = {"limit": 51, **params}
            args = ", ".join(str(values[n]) if isinstance(values[n], int) else f"'{values[n]}'" for n in names)
            lines = [r[0].strip() for r in await conn.fetch(f"EXPLAIN EXECUTE q{i}({args})")]
            scan = next(line.split("  (")[0].lstrip("-> ") for line in lines if "Scan" in line)
            filtered = any(line.startswith("Filter") for line in lines)
            out.append((name, scan + (" + Filter" if filtered else "")))
        return out
    finally:
        await conn.close()


async def load(url: str, n: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(LOAD, n, time.time())
        await conn.execute("ANALYZE tasks")
    finally:
        await conn.close()
    return time.perf_counter() - started


def timed(client: httpx.Client, path: str, params: dict, requests: int) -> tuple[float, float, int]:
    """p50 and p95 in ms over ``requests`` sequential calls (after 5 to warm up), and the status."""
    status = 0
    for _ in range(5):
        status = client.get(path, params=params).status_code
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        response = client.get(path, params=params)
        times.append((time.perf_counter() - t) * 1000)
        status = response.status_code
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], status


def deep_cursor(client: httpx.Client, params: dict, pages: int) -> str:
    cursor = None
    for _ in range(pages):
        page = client.get("/api/tasks", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        cursor = page["next_cursor"]
    return cursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks to load")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per route")
    args = parser.parse_args()
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        # The API's start runs the migrations; the load goes in after, as into a live database.
        with api_process(url, Path(tmp)) as api:
            seconds = asyncio.run(load(url, args.tasks))
            print(f"loaded {args.tasks:,} tasks in {seconds:.1f} s (generate_series, then ANALYZE)")
            with httpx.Client(base_url=api.url, timeout=60, trust_env=False) as client:
                routes = [
                    ("list, newest page", "/api/tasks", {"limit": 50}),
                    ("list, page 100 by cursor", "/api/tasks",
                     {"limit": 50, "cursor": deep_cursor(client, {"limit": 50}, 100)}),
                    ("filtered: face_swap FAILED", "/api/tasks", {"workflow": "face_swap", "status": "FAILED", "limit": 50}),
                    ("filtered: tts PROCESSING", "/api/tasks", {"workflow": "tts", "status": "PROCESSING", "limit": 50}),
                    # No echo task is PROCESSING in this mix: the worst case, an empty answer.
                    ("filtered: echo PROCESSING (none)", "/api/tasks", {"workflow": "echo", "status": "PROCESSING", "limit": 50}),
                    ("filtered: image_gen COMPLETED, page 100", "/api/tasks",
                     {"workflow": "image_gen", "status": "COMPLETED", "limit": 50,
                      "cursor": deep_cursor(client, {"workflow": "image_gen", "status": "COMPLETED", "limit": 50}, 100)}),
                    ("status only: PENDING", "/api/tasks", {"status": "PENDING", "limit": 50}),
                    ("stats", "/api/stats", {}),
                    ("metrics", "/metrics", {}),
                ]
                cases = [(name, {k: (int(v) if k == "cursor" else v) for k, v in params.items() if k != "limit"})
                         for name, path, params in routes if path == "/api/tasks"]
                for name, plan in asyncio.run(plans(url, cases)):
                    print(f"plan  {name:<42} {plan}")
                print(f"{'route':<42} {'p50 ms':>8} {'p95 ms':>8}  status")
                for name, path, params in routes:
                    p50, p95, status = timed(client, path, params, args.requests)
                    if status == 404:
                        print(f"{name:<42} {'-':>8} {'-':>8}  404: not in this API")
                        continue
                    print(f"{name:<42} {p50:8.1f} {p95:8.1f}  {status}")


if __name__ == "__main__":
    main()
