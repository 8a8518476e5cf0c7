"""The consumer process: its parts built from settings, started, and stopped in order.

``Consumer`` wires the API client, model-server pools, storage, input fetcher and processors
together; ``fetch_loop.py`` decides what to lease, ``attempts.py`` runs each leased task.
Promises kept here, on stop: no new fetches, in-flight tasks get ``shutdown_grace_s``, the rest
are released. A SIGKILL needs nothing from us: the lease expires and another consumer takes the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from consumer.attempts import Attempts
from consumer.completions import CompletionBatcher
from consumer.errors import TokenRefused
from consumer.fetch_loop import Capacity, FetchLoop
from consumer.inputs import InputFetcher, max_bytes_from_mb
from consumer.metrics import Metrics
from consumer.model_client import ModelServerPool
from consumer.presence import report_forever
from consumer.registry import Runnable, resolve
from consumer.settings import ConsumerSettings, url_setting
from taskfleet.client import ApiTransport, ConsumerClient
from taskfleet.errors import ConfigError, TaskfleetError
from taskfleet.scratch import Scratch
from taskfleet.urlguard import UrlGuard

log = logging.getLogger("consumer")


class Consumer:
    """One consumer process: built from settings (tests pass their own client, storage, transports)."""

    def __init__(
        self,
        settings: ConsumerSettings,
        *,
        client: ConsumerClient | None = None,
        storage: Any = None,
        runnables: dict[str, Runnable] | None = None,
        metrics: Metrics | None = None,
        model_transport: httpx.AsyncBaseTransport | None = None,
        input_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.client = client or ConsumerClient(
            settings.api_url, settings.consumer_token, consumer_id=settings.consumer_id,
            # A few connections, not one per task: a long-poll, a complete and a heartbeat or two
            # are all a consumer has in flight, and each idle connection is a server socket.
            transport=ApiTransport(
                limits=httpx.Limits(max_connections=settings.api_connections, max_keepalive_connections=settings.api_connections)
            ),
        )
        self.completions = CompletionBatcher(self.client)
        # Attempt folders live in this process's own scratch folder: one left by a SIGKILLed
        # consumer is removed by the next consumer to start on the same work_dir.
        self.scratch = Scratch(settings.work_dir, "consumer")
        if runnables is None:
            runnables = resolve(settings.workflows)
            if not settings.workflows:
                runnables = _servable(runnables, settings.server_urls())
        self.runnables = runnables
        if storage is None:
            try:
                storage = _open_storage(settings)
            except TaskfleetError as exc:
                raise ConfigError(f"TASKFLEET_STORAGE_URL: {exc.message}") from exc
        self.storage = storage
        self.pools = self._build_pools(model_transport)
        self.guard = UrlGuard(settings.url_allowlist)
        self.fetcher = InputFetcher(
            self.guard,
            max_bytes_from_mb(settings.max_input_mb),
            open_storage=lambda url: _open_storage(settings, url),
            transport=input_transport,
        )
        self._stopping = asyncio.Event()
        self._grace_over = asyncio.Event()
        self.capacity = Capacity(
            self.runnables, self.pools,
            concurrency=settings.concurrency, outage_backoff_max_s=settings.outage_backoff_max_s,
        )
        self.attempts = Attempts(
            settings, self.runnables, client=self.client, completions=self.completions, storage=self.storage,
            fetcher=self.fetcher, pools=self.pools, scratch=self.scratch, metrics=self.metrics,
            capacity=self.capacity, stopping=self._stopping,
        )
        self.fetch_loop = FetchLoop(
            self.client, self.capacity, self.attempts,
            fetch_wait_s=settings.fetch_wait_s, metrics=self.metrics, stopping=self._stopping,
        )
        self._metrics_server = None

    def _build_pools(self, transport: httpx.AsyncBaseTransport | None) -> dict[str, ModelServerPool]:
        urls = self.settings.server_urls()
        needed = {kind for r in self.runnables.values() for kind in r.model_servers}
        missing = sorted(
            f"{r.name} needs {kind!r}" for r in self.runnables.values() for kind in r.model_servers if not urls.get(kind)
        )
        if missing:
            env = ", ".join(url_setting(k) for k in sorted(needed - set(urls)))
            raise ConfigError(f"no model server URLs for: {'; '.join(missing)} (set {env})")
        s = self.settings
        return {
            kind: ModelServerPool(
                kind, urls[kind], health_ttl_s=s.health_ttl_s, breaker_failures=s.breaker_failures,
                breaker_reset_s=s.breaker_reset_s, metrics=self.metrics, transport=transport,
            )
            for kind in sorted(needed)
        }

    def request_stop(self) -> None:
        """First call: stop fetching and drain. Second call: stop waiting and release now."""
        if self._stopping.is_set():
            log.warning("second stop signal: releasing in-flight tasks now")
            self._grace_over.set()
        self._stopping.set()
        self.capacity.changed.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        self.scratch.open()  # before the metrics port answers: readiness implies a clean work_dir
        if self.settings.metrics_port is not None:
            self._metrics_server = self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self._metrics_server.server_port)
        log.info(
            "consumer %s serving %s with concurrency %d",
            self.client.consumer_id, ", ".join(self.runnables), self.settings.concurrency,
        )
        health = asyncio.create_task(self.capacity.refresh_loop(self.settings.health_ttl_s / 2))
        presence = asyncio.create_task(report_forever(self.client, self.snapshot))
        refused: TokenRefused | None = None
        try:
            try:
                await self.fetch_loop.run()
            except TokenRefused as exc:
                refused = exc
                self.request_stop()
            await self._drain()
        finally:
            health.cancel()
            presence.cancel()
            await asyncio.gather(health, presence, return_exceptions=True)
            await self.aclose()
        log.info("consumer %s stopped", self.client.consumer_id)
        if refused is not None:
            raise refused

    def snapshot(self) -> dict[str, Any]:
        """This consumer as its registry report shows it: workflows, load, model servers."""
        return {
            "workflows": sorted(self.runnables),
            "concurrency": self.settings.concurrency,
            "in_flight": len(self.attempts.running),
            "model_servers": [
                {**server, "workflow": kind} for kind, pool in self.pools.items() for server in pool.describe()
            ],
        }

    async def aclose(self) -> None:
        for pool in self.pools.values():
            await pool.aclose()
        await self.fetcher.aclose()
        await self.completions.aclose()
        await self.client.aclose()
        self.scratch.close()
        if self.storage is not None and hasattr(self.storage, "aclose"):
            await self.storage.aclose()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()

    async def _drain(self) -> None:
        workers = self.attempts.workers
        if workers and not self._grace_over.is_set():
            log.info("draining %d in-flight task(s), grace %.1fs", len(workers), self.settings.shutdown_grace_s)
            grace_over = asyncio.create_task(self._grace_over.wait())
            deadline = time.monotonic() + self.settings.shutdown_grace_s
            while workers and not grace_over.done() and time.monotonic() < deadline:
                await asyncio.wait(
                    {*workers, grace_over}, timeout=deadline - time.monotonic(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            grace_over.cancel()
        self.attempts.stop_all("shutdown")
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)


def _servable(runnables: dict[str, Runnable], urls: dict[str, list[str]]) -> dict[str, Runnable]:
    """With no workflows named, those whose model servers are configured; says which it leaves out.

    A bare ``taskfleet consumer`` then serves echo and whatever needs no model server, instead of
    refusing to start over workflows nobody asked it for.
    """
    servable: dict[str, Runnable] = {}
    skipped: list[str] = []
    for name, runnable in runnables.items():
        missing = [kind for kind in runnable.model_servers if not urls.get(kind)]
        if missing:
            skipped.append(f"{name} (needs {' and '.join(url_setting(kind) for kind in missing)})")
        else:
            servable[name] = runnable
    if not servable:
        raise ConfigError(f"no workflow can be served: no model-server URLs are set for {', '.join(skipped)}")
    if skipped:
        log.info("skipping workflows whose model-server URLs are not set: %s", ", ".join(skipped))
    return servable


def _open_storage(settings: ConsumerSettings, url: str | None = None) -> Any:
    """The configured storage, or (``url``) another bucket read with the same endpoint options."""
    from urllib.parse import urlsplit

    from storage import open_storage

    if url is not None:
        configured = urlsplit(settings.storage_url)
        if urlsplit(url).scheme == configured.scheme and configured.query:
            url = f"{url}?{configured.query}"  # e.g. endpoint_url= for R2 / MinIO
    return open_storage(
        url or settings.storage_url,
        public_base_url=(settings.public_url or settings.api_url).rstrip("/"),
        url_expiry_s=settings.url_expiry_s,
    )
