"""The consumer's Prometheus metrics, on a registry of its own (several consumers can share a process in tests)."""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.tasks = Counter(
            "taskfleet_consumer_tasks", "Tasks this consumer finished, by how they ended",
            ["workflow", "outcome"], registry=r,
        )
        self.in_flight = Gauge("taskfleet_consumer_in_flight", "Tasks being worked on", ["workflow"], registry=r)
        self.task_seconds = Histogram(
            "taskfleet_consumer_task_seconds", "Processor run time", ["workflow", "outcome"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        )
        self.model_call_seconds = Histogram(
            "taskfleet_consumer_model_call_seconds", "Model-server call latency",
            ["kind", "server", "outcome"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.circuit_state = Gauge(
            "taskfleet_consumer_circuit_state", "Model-server circuit: 0 closed, 1 open, 2 half-open",
            ["kind", "server"], registry=r,
        )
        self.model_capacity = Gauge(
            "taskfleet_consumer_model_capacity", "Free model-server slots this consumer may fill", ["kind"], registry=r,
        )
        self.fetched = Counter("taskfleet_consumer_fetched_tasks", "Tasks leased from the API", registry=r)
        self.slot_wait = Counter(
            "taskfleet_consumer_slot_wait_seconds",
            "Time the consumer could ask for no work: every slot busy, or every model server it needs full or down",
            registry=r,
        )
        self._pools: list[Any] = []
        r.register(_ModelInFlight(self._pools))

    def watch_pool(self, pool: Any) -> None:
        """Export this model-server pool's calls in flight, read at each scrape."""
        self._pools.append(pool)

    def serve(self, host: str, port: int):
        """Serve /metrics from a daemon thread; returns the server (``server_port`` is the bound port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


class _ModelInFlight:
    """This consumer's calls in flight on each model server, read from the pools at scrape time."""

    def __init__(self, pools: list[Any]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "taskfleet_consumer_model_in_flight", "This consumer's calls in flight, by model server",
            labels=["kind", "server"],
        )
        for pool in list(self.pools):
            for ep in list(pool.endpoints):
                family.add_metric([pool.kind, ep.url], ep.in_flight)
        yield family

    def describe(self) -> list:
        return []
