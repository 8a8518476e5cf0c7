"""The consumer runtime: lease tasks the fleet can serve now, run them, report how each ended.

Promises kept here:
- fetch only as many tasks as there are free slots *and* free healthy model-server capacity;
- heartbeat every third of the lease, carrying progress; stop a task when its cancel arrives, its
  lease is lost, or its ``timeout_s`` runs out;
- a model-server outage releases the task (attempt not counted) and pauses fetching for that kind;
- the task's work directory is removed whatever happens;
- on stop: no new fetches, in-flight tasks get ``shutdown_grace_s``, the rest are released.
A SIGKILL needs nothing from us: the lease expires and another consumer takes the task.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from consumer.completions import CompletionBatcher
from consumer.context import TaskContext
from consumer.errors import ModelServerUnavailable, ProcessorError, TaskTimeout
from consumer.inputs import InputFetcher, max_bytes_from_mb
from consumer.logs import current_task_id, current_workflow
from consumer.metrics import Metrics
from consumer.model_client import ModelServerPool
from consumer.registry import Runnable, resolve
from consumer.settings import ConsumerSettings
from taskfleet.client import ApiTransport, ConsumerClient
from taskfleet.errors import ConfigError, LeaseLost, TaskfleetError
from taskfleet.scratch import Scratch
from taskfleet.urlguard import UrlGuard

log = logging.getLogger("consumer")

# Our timer starts when the fetch answer arrives, a little after the API started its own deadline
# clock; stopping this much earlier lets our "timed_out" report land before the API's fence closes.
TIMEOUT_MARGIN_S = 0.25
MIN_HEARTBEAT_S = 0.2
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
PROGRESS_HEARTBEAT_MIN_S = 1.0  # progress changes are pushed at most this often


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, LeaseLost):
        return False
    if isinstance(exc, TaskfleetError):
        return exc.retryable
    return isinstance(exc, httpx.TransportError)


def _seconds_until(iso: str) -> float:
    expires = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    return (expires - datetime.now(timezone.utc)).total_seconds()


@dataclass
class Running:
    """One leased task while this consumer works on it."""

    task: dict[str, Any]
    runnable: Runnable
    lease_id: str
    ctx: TaskContext | None = None
    work: asyncio.Task | None = None
    stop_reason: str | None = None  # "cancelled" | "timeout" | "lease_lost" | "shutdown"
    cancel_requested: bool = False
    progress_changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def task_id(self) -> str:
        return self.task["task_id"]

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.work is not None and not self.work.done():
            self.work.cancel()


class Consumer:
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
        self.runnables = runnables if runnables is not None else resolve(settings.workflows)
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
        self.running: dict[str, Running] = {}
        self._stopping = asyncio.Event()
        self._grace_over = asyncio.Event()
        self._wake = asyncio.Event()  # a slot freed, capacity may have changed, or stop
        self._backoff: dict[str, tuple[float, float]] = {}  # kind -> (paused until, last pause)
        self._workers: set[asyncio.Task] = set()
        self._metrics_server = None

    # -- setup ------------------------------------------------------------------------------

    def _build_pools(self, transport: httpx.AsyncBaseTransport | None) -> dict[str, ModelServerPool]:
        urls = self.settings.server_urls()
        needed = {kind for r in self.runnables.values() for kind in r.model_servers}
        missing = sorted(
            f"{r.name} needs {kind!r}" for r in self.runnables.values() for kind in r.model_servers if not urls.get(kind)
        )
        if missing:
            env = ", ".join(f"TASKFLEET_{k.upper()}_URLS" for k in sorted(needed - set(urls)))
            raise ConfigError(f"no model server URLs for: {'; '.join(missing)} (set {env} or TASKFLEET_MODEL_SERVER_URLS)")
        s = self.settings
        return {
            kind: ModelServerPool(
                kind, urls[kind], health_ttl_s=s.health_ttl_s, breaker_failures=s.breaker_failures,
                breaker_reset_s=s.breaker_reset_s, metrics=self.metrics, transport=transport,
            )
            for kind in sorted(needed)
        }

    # -- lifecycle --------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop fetching and drain. Second call: stop waiting and release now."""
        if self._stopping.is_set():
            log.warning("second stop signal: releasing in-flight tasks now")
            self._grace_over.set()
        self._stopping.set()
        self._wake.set()

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
        health = asyncio.create_task(self._health_loop())
        try:
            await self._fetch_loop()
            await self._drain()
        finally:
            health.cancel()
            await asyncio.gather(health, return_exceptions=True)
            await self.aclose()
        log.info("consumer %s stopped", self.client.consumer_id)

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
        if self._workers and not self._grace_over.is_set():
            log.info("draining %d in-flight task(s), grace %.1fs", len(self._workers), self.settings.shutdown_grace_s)
            grace_over = asyncio.create_task(self._grace_over.wait())
            deadline = time.monotonic() + self.settings.shutdown_grace_s
            while self._workers and not grace_over.done() and time.monotonic() < deadline:
                await asyncio.wait(
                    {*self._workers, grace_over}, timeout=deadline - time.monotonic(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            grace_over.cancel()
        for running in list(self.running.values()):
            running.stop("shutdown")
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)

    # -- fetching ---------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(p.refresh() for p in self.pools.values()), return_exceptions=True)
            self._wake.set()
            await asyncio.sleep(self.settings.health_ttl_s / 2)

    def _our_tasks(self, kind: str) -> int:
        return sum(1 for r in self.running.values() if kind in r.runnable.model_servers)

    def _plan(self) -> tuple[list[str], int]:
        """Which workflows to ask for, and how many tasks at most, given slots and capacity."""
        free = self.settings.concurrency - len(self.running)
        if free <= 0:
            return [], 0
        now = time.monotonic()
        room: dict[str, int] = {}
        for kind, pool in self.pools.items():
            paused_until = self._backoff.get(kind, (0.0, 0.0))[0]
            room[kind] = 0 if now < paused_until else pool.free_slots(self._our_tasks(kind))
        names: list[str] = []
        limit = free
        for name, r in self.runnables.items():
            if all(room[k] > 0 for k in r.model_servers):
                names.append(name)
                for k in r.model_servers:
                    # One fetch may return any mix of the named workflows, so the tightest kind caps it.
                    limit = min(limit, room[k])
        return names, limit

    async def _fetch_loop(self) -> None:
        api_backoff = 0.0
        while not self.stopping:
            names, limit = self._plan()
            if not names:
                self._wake.clear()
                await self._wait_wake(1.0)
                continue
            try:
                # Not cancelled on stop: the API may have leased tasks to us already, and a response
                # dropped on the floor would leave them leased until expiry (and count an attempt).
                wait_s = self.settings.fetch_wait_s
                if len(names) < len(self.runnables):
                    # Some workflows are held back (server down or full): poll briefly, so that
                    # they are asked for again soon after their capacity returns.
                    wait_s = min(wait_s, 1.0)
                tasks = await asyncio.shield(self.client.fetch(names, limit=limit, wait_s=wait_s))
                api_backoff = 0.0
            except (TaskfleetError, httpx.HTTPError) as exc:
                api_backoff = min(max(api_backoff * 2, 0.5), 15.0)
                log.warning("fetch failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, api_backoff)
                await self._wait_stop(api_backoff)
                continue
            self.metrics.fetched.inc(len(tasks))
            for task in tasks:
                self._start(task)
            if tasks:
                # Let the new tasks send their first request before the next long poll is built.
                await asyncio.sleep(0)

    async def _wait_wake(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _wait_stop(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _start(self, task: dict[str, Any]) -> None:
        runnable = self.runnables.get(task["workflow"])
        running = Running(task, runnable, task["lease"]["id"]) if runnable else None
        if running is None:
            # The API only hands out what we asked for; this guards against a misrouted task.
            log.error("fetched task %s of unserved workflow %s; releasing", task["task_id"], task["workflow"])
            worker = asyncio.create_task(self._report(task["task_id"], "release", task["lease"]["id"]))
        else:
            self.running[running.task_id] = running
            worker = asyncio.create_task(self._run_task(running))
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    # -- one task ---------------------------------------------------------------------------

    async def _run_task(self, running: Running) -> None:
        task, r = running.task, running.runnable
        current_task_id.set(running.task_id)
        current_workflow.set(r.name)
        self.metrics.in_flight.labels(r.name).inc()
        started = time.perf_counter()
        outcome = "error"
        workdir: Path | None = None
        heartbeat: asyncio.Task | None = None
        try:
            if self.stopping:
                outcome = "released"
                await self._report(running.task_id, "release", running.lease_id)
                return
            output: Any = None
            error: BaseException | None = None
            try:
                # Unique per attempt (a stale one from a killed consumer must not be reused);
                # created when the processor first touches ctx.workdir.
                workdir = self.scratch.path / _SAFE_NAME.sub("_", f"{running.task_id}-{running.lease_id}")
                lease_s = max(1.0, _seconds_until(task["lease"]["expires_at"]))
                running.ctx = self._context(running, workdir)
            except Exception as exc:  # noqa: BLE001 -- e.g. a full disk: reported like a processor failure
                error = exc
            else:
                running.work = asyncio.create_task(self._process(r, running.ctx))
                heartbeat = asyncio.create_task(self._heartbeat_loop(running, lease_s))
                timeout_s = max(0.05, float(task.get("timeout_s") or r.workflow.timeout_s) - TIMEOUT_MARGIN_S)
                done, _ = await asyncio.wait({running.work}, timeout=timeout_s)
                if not done:
                    running.stop("timeout")
                try:
                    output = await running.work
                except asyncio.CancelledError:
                    if running.stop_reason is None:
                        # Not our doing: the processor let a cancellation of its own escape.
                        error = ProcessorError("the processor was cancelled from inside")
                except Exception as exc:  # noqa: BLE001 -- every failure of a processor is reported
                    error = exc
                heartbeat.cancel()
            outcome = await self._finish(running, output, error)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            if running.work is not None and not running.work.done():
                running.work.cancel()
            if workdir is not None:
                # Inline, not in a thread: unlinking a few files is cheaper than the thread hop.
                shutil.rmtree(workdir, ignore_errors=True)
            self.running.pop(running.task_id, None)
            self.metrics.in_flight.labels(r.name).dec()
            self.metrics.tasks.labels(r.name, outcome).inc()
            self.metrics.task_seconds.labels(r.name, outcome).observe(time.perf_counter() - started)
            self._wake.set()

    def _context(self, running: Running, workdir: Path) -> TaskContext:
        task, r = running.task, running.runnable

        async def on_progress() -> None:
            running.progress_changed.set()

        kinds = r.model_servers
        return TaskContext(
            task_id=running.task_id,
            workflow=r.name,
            input=task.get("input") or {},
            attempt=int(task.get("attempts", 0)) + 1,
            workdir=workdir,
            storage=self.storage,
            timeout_s=float(task.get("timeout_s") or r.workflow.timeout_s),
            metadata=task.get("metadata") or {},
            model_server_kind=kinds[0] if kinds else None,
            _fetcher=self.fetcher,
            _pools={k: self.pools[k].client(self.settings.timeout_for(r.name)) for k in kinds},
            _cancel_requested=lambda: running.cancel_requested,
            _on_progress=on_progress,
        )

    async def _process(self, r: Runnable, ctx: TaskContext) -> dict[str, Any]:
        # The API validated the input against its copy of the definition; validating again here
        # fills defaults and catches an API and a consumer that disagree about the workflow.
        ctx.input = r.workflow.validate_input(ctx.input)
        output = await r.processor(ctx)
        if r.workflow.output_model is not None:
            try:
                output = r.workflow.output_model.model_validate(output).model_dump(mode="json")
            except ValueError as exc:
                raise ProcessorError(f"processor output does not match {r.name}'s output model: {exc}",
                                     code="invalid_output", retryable=False) from None
        return output

    async def _heartbeat_loop(self, running: Running, lease_s: float) -> None:
        interval = max(MIN_HEARTBEAT_S, lease_s / 3)
        lease_left_until = time.monotonic() + lease_s
        last_sent = time.monotonic()
        while True:
            next_due = last_sent + interval
            try:
                await asyncio.wait_for(running.progress_changed.wait(), timeout=max(0.0, next_due - time.monotonic()))
                # Progress moved: push it soon, but not more than once a second per task.
                await asyncio.sleep(max(0.0, last_sent + PROGRESS_HEARTBEAT_MIN_S - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            running.progress_changed.clear()
            progress = None
            if running.ctx is not None:
                progress = {"percent": running.ctx._progress.percent, "message": running.ctx._progress.message}
            last_sent = time.monotonic()
            try:
                answer = await self.client.heartbeat(running.task_id, running.lease_id, progress)
            except LeaseLost:
                log.warning("lease lost (expired or taken over); stopping work")
                running.stop("lease_lost")
                return
            except (TaskfleetError, httpx.HTTPError) as exc:
                if time.monotonic() >= lease_left_until:
                    log.warning("no heartbeat got through before the lease ran out (%s); stopping work", exc)
                    running.stop("lease_lost")
                    return
                log.warning("heartbeat failed (%s: %s); will retry", type(exc).__name__, exc)
                continue
            lease_left_until = time.monotonic() + max(0.0, _seconds_until(answer["lease_expires_at"]))
            if answer.get("cancel_requested"):
                # The API has already ended the lease as CANCELLED; there is nothing left to report.
                log.info("cancel requested; stopping work")
                running.cancel_requested = True
                running.stop("cancelled")
                return

    async def _finish(self, running: Running, output: Any, error: BaseException | None) -> str:
        """Report how the attempt ended; returns the outcome label for metrics and logs."""
        reason = running.stop_reason
        tid, lease = running.task_id, running.lease_id
        if reason == "cancelled":
            return "cancelled"
        if reason == "lease_lost":
            return "lease_lost"
        if reason == "shutdown":
            await self._report(tid, "release", lease)
            return "released"
        if reason == "timeout":
            error = TaskTimeout(f"task ran past its timeout_s of {running.task.get('timeout_s')}s")
        if error is None:
            await self._report(tid, "complete", lease, output=output)
            for kind in running.runnable.model_servers:
                self._backoff.pop(kind, None)  # the kind works again: next outage starts from a short pause
            log.info("task completed")
            return "completed"
        if isinstance(error, ModelServerUnavailable):
            pause = self._pause_kind(error)
            pool = self.pools.get(error.kind)
            log.warning(
                "model server unavailable (%s); releasing, pausing %s for %.1fs", error, error.kind, pause,
                extra={"servers": pool.describe() if pool else None},
            )
            await self._report(tid, "release", lease)
            return "released"
        if not isinstance(error, TaskfleetError):
            log.exception("processor raised", exc_info=error)
            error = ProcessorError(f"{type(error).__name__}: {error}")
        log.warning("task failed: %s (%s, retryable=%s)", error.message, error.code, error.retryable)
        await self._report(
            tid, "fail", lease, code=error.code, message=error.message[:2000],
            retryable=bool(error.retryable), retry_after_s=getattr(error, "retry_after_s", None),
        )
        return "failed_retryable" if error.retryable else "failed"

    def _pause_kind(self, error: ModelServerUnavailable) -> float:
        kind = error.kind
        _, last = self._backoff.get(kind, (0.0, 0.0))
        pause = min(self.settings.outage_backoff_max_s, max(1.0, last * 2))
        if error.retry_after_s:
            pause = min(self.settings.outage_backoff_max_s, max(pause, error.retry_after_s))
        self._backoff[kind] = (time.monotonic() + pause, pause)
        return pause

    async def _report(self, task_id: str, action: str, lease_id: str, **kwargs: Any) -> None:
        """complete / fail / release, retried through brief API trouble; a lost lease is logged, not raised."""
        # Completions share requests (see completions.py); fail and release are rare enough alone.
        call: Callable[..., Awaitable[Any]] = (
            self.completions.complete if action == "complete" else getattr(self.client, action)
        )
        tries = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(30), wait=wait_exponential(multiplier=0.2, max=5),
                retry=retry_if_exception(_is_transient), reraise=True,
            ):
                with attempt:
                    tries += 1
                    await call(task_id, lease_id, **kwargs)
        except LeaseLost:
            if tries > 1:
                # An earlier try probably landed and its answer was lost; the fence then refuses the resend.
                log.info("%s answered lease_lost on try %d: the earlier try most likely landed", action, tries)
            else:
                log.warning("%s refused: lease lost (expired or taken over)", action)
        except (TaskfleetError, httpx.HTTPError) as exc:
            log.error("%s failed for good (%s); the lease will expire and the task be retried", action, exc)


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
