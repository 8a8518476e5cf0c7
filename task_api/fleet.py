"""The operator's view of the fleet: the consumer registry and the per-workflow stats.

Consumers report themselves every few seconds (``POST /api/comm/consumers/report``); each
report is one upsert of one row, so every replica answers ``GET /api/consumers`` alike from the
shared table. A consumer that stops reporting drops out of the list after ``ttl_s``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

from task_api.schemas import iso
from task_api.store import Store, sql

SHORT_S = 300.0
LONG_S = 3600.0
DURATION_SAMPLE = 10_000  # the newest completions of the hour behind the wait / run percentiles


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile of ``values`` (sorted), or None for none."""
    if not values:
        return None
    rank = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return round(values[rank], 3)


class Fleet:
    def __init__(self, store: Store, *, ttl_s: float, report_every_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.report_every_s = report_every_s

    async def report(self, report: dict[str, Any]) -> None:
        await self.store.execute(
            sql.REPORT_CONSUMER,
            {"consumer_id": report["consumer_id"], "host": report.get("host"), "report": json.dumps(report),
             "now": time.time()},
        )  # fmt: skip

    async def consumers(self) -> list[dict[str, Any]]:
        rows = await self.store.fetch(sql.LIVE_CONSUMERS, {"since": time.time() - self.ttl_s})
        return [
            {**json.loads(r["report"]), "consumer_id": r["consumer_id"], "host": r["host"],
             "started_at": iso(r["started_at"]), "last_seen": iso(r["last_seen"])}
            for r in rows
        ]  # fmt: skip

    async def purge(self, older_than_s: float) -> int:
        return await self.store.execute(sql.PURGE_CONSUMERS, {"cutoff": time.time() - older_than_s})

    async def stats(self, workflows: Iterable[str]) -> list[dict[str, Any]]:
        now = time.time()
        since = {"since_short": now - SHORT_S, "since_long": now - LONG_S}
        by_workflow: dict[str, dict[str, Any]] = {}

        def entry(name: str) -> dict[str, Any]:
            if name not in by_workflow:
                by_workflow[name] = {
                    "workflow": name, "pending": 0, "processing": 0, "completed_5m": 0, "failed_5m": 0,
                    "completed_1h": 0, "failed_1h": 0, "oldest_pending_age_s": 0.0, "waits": [], "runs": [],
                }  # fmt: skip
            return by_workflow[name]

        for name in workflows:
            entry(name)
        for r in await self.store.fetch(sql.STATS_OPEN):
            e = entry(r["workflow"])
            e[r["status"].lower()] = r["n"]
            if r["status"] == "PENDING":
                e["oldest_pending_age_s"] = round(max(0.0, now - r["oldest"]), 3)
        for r in await self.store.fetch(sql.STATS_FINISHED, since):
            e = entry(r["workflow"])
            e["completed_5m"], e["failed_5m"] = int(r["completed_short"] or 0), int(r["failed_short"] or 0)
            e["completed_1h"], e["failed_1h"] = int(r["completed_long"] or 0), int(r["failed_long"] or 0)
        for r in await self.store.fetch(sql.STATS_DURATIONS, {"since_long": since["since_long"], "limit": DURATION_SAMPLE}):
            e = entry(r["workflow"])
            e["waits"].append(max(0.0, r["wait_s"]))
            e["runs"].append(max(0.0, r["run_s"]))
        out = []
        for name in sorted(by_workflow):
            e = by_workflow[name]
            waits, runs = sorted(e.pop("waits")), sorted(e.pop("runs"))
            e["completed_per_min_5m"] = round(e["completed_5m"] / (SHORT_S / 60), 3)
            e["completed_per_min_1h"] = round(e["completed_1h"] / (LONG_S / 60), 3)
            e["wait_s"] = {"p50": percentile(waits, 50), "p95": percentile(waits, 95)}
            e["run_s"] = {"p50": percentile(runs, 50), "p95": percentile(runs, 95)}
            out.append(e)
        return out
