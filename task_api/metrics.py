"""Prometheus metrics of the task API, on a registry per app (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from task_api.queue import Queue
from taskfleet.errors import CommitUnknown, DatabaseUnavailable


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks = Gauge("taskfleet_tasks", "Tasks by workflow and status", ["workflow", "status"], registry=self.registry)
        self.queue_depth = Gauge("taskfleet_queue_depth", "PENDING tasks", registry=self.registry)
        self.oldest_pending = Gauge(
            "taskfleet_oldest_pending_age_seconds", "Age of the oldest PENDING task, by workflow", ["workflow"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "taskfleet_attempts", "Leases ended, by outcome", ["workflow", "outcome"], registry=self.registry
        )
        self.duration = Histogram(
            "taskfleet_task_duration_seconds",
            "Time from lease to finish of finished attempts",
            ["workflow", "status"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        # prometheus-client exposes a counter as NAME_total plus a NAME_created timestamp: a counter
        # named *_created would export taskfleet_tasks_created_created beside it.
        self.created = Counter("taskfleet_tasks_accepted", "Tasks accepted", ["workflow"], registry=self.registry)
        # Postgres only: 1 while the LISTEN connection is up; 0 while lost, when other replicas'
        # changes reach this replica's parked fetches only through the reaper's periodic check.
        self.listen_connected = Gauge(
            "taskfleet_listen_connected", "1 while the database LISTEN connection is up (Postgres)",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "taskfleet_database_up", "1 if the last metrics read of the database succeeded", registry=self.registry
        )
        # Exported as taskfleet_compute_seconds_total: model-server slot seconds the consumers
        # reported with their attempts' ends (complete and fail), by the task's workflow and producer.
        self.compute = Counter(
            "taskfleet_compute_seconds", "Model-server slot seconds reported by consumers",
            ["workflow", "producer"], registry=self.registry,
        )
        self.expired = Counter(
            "taskfleet_tasks_expired", "Tasks ended FAILED expired while PENDING", ["workflow"], registry=self.registry
        )

    def count_compute(self, row: dict, seconds: float) -> None:
        if seconds > 0:
            self.compute.labels(row["workflow"], row.get("producer") or "default").inc(seconds)

    def observe_finished(self, row: dict) -> None:
        if row.get("started_at") and row.get("finished_at"):
            self.duration.labels(row["workflow"], row["status"]).observe(max(0.0, row["finished_at"] - row["started_at"]))

    async def render(self, queue: Queue) -> bytes:
        try:
            stats = await queue.stats()
        except (DatabaseUnavailable, CommitUnknown):
            # While the database is away the process's own metrics still answer (the listen
            # gauge above all); the task gauges keep their last values.
            self.database_up.set(0)
            return generate_latest(self.registry)
        self.database_up.set(1)
        self.tasks.clear()
        depth = 0
        for workflow, status, n in stats["counts"]:
            self.tasks.labels(workflow, status).set(n)
            if status == "PENDING":
                depth += n
        self.queue_depth.set(depth)
        # Cleared first: a workflow whose queue emptied has no oldest task, and no series.
        self.oldest_pending.clear()
        for workflow, age in stats["oldest_pending_age_s"].items():
            self.oldest_pending.labels(workflow).set(age)
        return generate_latest(self.registry)
