"""Prometheus metrics every model server exports at ``GET /metrics``: its device slots (held,
queued, how long a request waited for one, seconds held in all) and request seconds by route
and status.

A registry per app, as the task API has: tests build many apps in one process.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class ModelServerMetrics:
    def __init__(self, slots: Any) -> None:
        self.registry = r = CollectorRegistry()
        self.in_flight = Gauge("taskfleet_model_server_in_flight", "Requests holding a device slot", registry=r)
        self.in_flight.set_function(lambda: slots.in_flight)
        self.waiting = Gauge("taskfleet_model_server_waiting", "Requests queued for a device slot", registry=r)
        self.waiting.set_function(lambda: slots.waiting)
        self.capacity = Gauge("taskfleet_model_server_capacity", "Device slots (TASKFLEET_GPU_SLOTS)", registry=r)
        self.capacity.set(slots.capacity)
        self.slot_wait = Histogram(
            "taskfleet_model_server_slot_wait_seconds", "Time a request queued before it got a device slot",
            registry=r, buckets=SECONDS,
        )
        slots.on_wait = self.slot_wait.observe
        # The sum of what the answers' X-Compute-Seconds (or face swap's compute_s) report.
        self.compute = Counter(
            "taskfleet_model_server_compute_seconds", "Seconds requests held a device slot", registry=r
        )
        slots.on_held = self.compute.inc
        self.request_seconds = Histogram(
            "taskfleet_model_server_request_seconds", "HTTP requests by route template and status",
            ["route", "status"], registry=r, buckets=SECONDS,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Times each request under its route template (``unmatched`` for any path no route has,
    so a scanner cannot grow the label set)."""

    def __init__(self, app: Any, metrics: ModelServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(route, str(status)).observe(
                time.perf_counter() - started
            )


def install_metrics(app: FastAPI, slots: Any) -> ModelServerMetrics:
    metrics = ModelServerMetrics(slots)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return metrics
