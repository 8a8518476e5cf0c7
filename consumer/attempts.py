"""One leased task from start to report: its processor, its heartbeats, how the attempt ended.

Promises kept here:
- heartbeat every third of the lease, carrying progress; stop a task when its cancel arrives, its
  lease is lost, or its ``timeout_s`` runs out;
- a model-server outage releases the task (attempt not counted) and pauses fetching for that kind;
- the task's work directory is removed whatever happens;
- complete / fail / release are retried through brief API trouble; a lost lease is only logged.
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
from typing import Any, Awaitable, Callable, Coroutine, Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from consumer.completions import CompletionBatcher
from consumer.context import Progress, TaskContext, workdir_made
from consumer.errors import ModelServerUnavailable, ProcessorError, TaskTimeout
from consumer.inputs import InputFetcher
from consumer.metrics import Metrics
from consumer.model_client import ComputeUsage, ModelServerPool
from consumer.registry import Runnable
from consumer.settings import ConsumerSettings
from taskfleet.client import ConsumerClient
from taskfleet.logs import current_task_id, current_workflow, new_request_id, request_id
from taskfleet.errors import LeaseLost, TaskfleetError
from taskfleet.scratch import Scratch

log = logging.getLogger("consumer")

# Our timer starts when the fetch answer arrives, a little after the API started its own deadline
# clock; stopping this much earlier lets our "timed_out" report land before the API's fence closes.
TIMEOUT_MARGIN_S = 0.25
MIN_HEARTBEAT_S = 0.2
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
PROGRESS_HEARTBEAT_MIN_S = 1.0  # progress changes are pushed at most this often
HEARTBEAT_RETRY_S = 0.5  # the first retry of a failed heartbeat; doubling, up to the regular interval
REPORT_RETRY_S = 0.2  # the first retry of a failed complete / fail / release; doubling, up to 5 s


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, LeaseLost):
        return False
    if isinstance(exc, TaskfleetError):
        return exc.retryable
    return isinstance(exc, httpx.TransportError)


def _heartbeat_interval(lease_s: float) -> float:
    return max(MIN_HEARTBEAT_S, lease_s / 3)


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
    work: asyncio.Task | None = None
    stop_reason: str | None = None  # "cancelled" | "timeout" | "lease_lost" | "shutdown"
    cancel_requested: bool = False
    progress_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # What the processor last reported through its TaskContext; heartbeats carry it.
    progress: Progress = field(default_factory=Progress)
    # Model-server slot seconds of this attempt, sent with its complete or fail.
    usage: ComputeUsage = field(default_factory=ComputeUsage)

    @property
    def task_id(self) -> str:
        return self.task["task_id"]

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.work is not None and not self.work.done():
            self.work.cancel()


class DeferredTask:
    """A task started ``after_s`` from now unless cancelled first: one that is seldom needed
    costs a timer, not a task and the timers of its first wait."""

    def __init__(self, start: Callable[[], Coroutine[Any, Any, None]], after_s: float) -> None:
        self._task: asyncio.Task | None = None
        self._timer = asyncio.get_running_loop().call_later(after_s, self._start, start)

    def _start(self, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._task = asyncio.create_task(start())

    def cancel(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


class CapacityHooks(Protocol):
    """What an attempt tells the capacity plan (``consumer.fetch_loop.Capacity``)."""

    changed: asyncio.Event  # set when a task ends: its slot is free again

    def pause(self, error: ModelServerUnavailable) -> float:
        """Stop fetching for the kind that had the outage; returns the pause in seconds."""

    def resume(self, kind: str) -> None:
        """The kind works again: its next outage starts from a short pause."""


class Attempts:
    """The tasks this consumer works on now, each run from its lease to its report."""

    def __init__(
        self,
        settings: ConsumerSettings,
        runnables: dict[str, Runnable],
        *,
        client: ConsumerClient,
        completions: CompletionBatcher,
        storage: Any,
        fetcher: InputFetcher,
        pools: dict[str, ModelServerPool],
        scratch: Scratch,
        metrics: Metrics,
        capacity: CapacityHooks,
        stopping: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.runnables = runnables
        self.client = client
        self.completions = completions
        self.storage = storage
        self.fetcher = fetcher
        self.pools = pools
        self.scratch = scratch
        self.metrics = metrics
        self.capacity = capacity
        self._stopping = stopping
        self.running: dict[str, Running] = {}
        self.workers: set[asyncio.Task] = set()

    def start(self, task: dict[str, Any]) -> None:
        runnable = self.runnables.get(task["workflow"])
        running = Running(task, runnable, task["lease"]["id"]) if runnable else None
        if running is None:
            # The API only hands out what we asked for; this guards against a misrouted task.
            log.error("fetched task %s of unserved workflow %s; releasing", task["task_id"], task["workflow"])
            worker = asyncio.create_task(self._report(task["task_id"], "release", task["lease"]["id"]))
        else:
            self.running[running.task_id] = running
            worker = asyncio.create_task(self._run(running))
        self.workers.add(worker)
        worker.add_done_callback(self.workers.discard)

    def stop_all(self, reason: str) -> None:
        for running in list(self.running.values()):
            running.stop(reason)

    async def _run(self, running: Running) -> None:
        task, r = running.task, running.runnable
        current_task_id.set(running.task_id)
        current_workflow.set(r.name)
        # One request id for the attempt: its calls to the API and the model servers carry it
        # (with the task id), so their log lines and ours can be joined.
        request_id.set(new_request_id())
        self.metrics.in_flight.labels(r.name).inc()
        started = time.perf_counter()
        outcome = "error"
        ran_s: float | None = None
        ctx: TaskContext | None = None
        heartbeat: DeferredTask | None = None
        try:
            if self._stopping.is_set():
                outcome = "released"
                await self._report(running.task_id, "release", running.lease_id)
                return
            output: Any = None
            error: BaseException | None = None
            try:
                # Unique per attempt (a stale one from a killed consumer must not be reused);
                # created when the processor first touches ctx.workdir.
                lease_s = max(1.0, _seconds_until(task["lease"]["expires_at"]))
                ctx = self._context(running, self.scratch.path / _SAFE_NAME.sub("_", f"{running.task_id}-{running.lease_id}"))
            except Exception as exc:  # noqa: BLE001 -- e.g. a full disk: reported like a processor failure
                error = exc
            else:
                running.work = asyncio.create_task(self._process(r, ctx))
                began = time.monotonic()
                # Nothing is sent before the first interval, or a second after the start for
                # progress, so the loop starts only then: most short tasks are over by that time.
                heartbeat = DeferredTask(
                    lambda: self._heartbeat_loop(running, lease_s, began),
                    after_s=min(PROGRESS_HEARTBEAT_MIN_S, _heartbeat_interval(lease_s)),
                )
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
            ran_s = self._free_slot(running, started)
            outcome = await self._finish(running, output, error)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            if running.work is not None and not running.work.done():
                running.work.cancel()
            if ctx is not None and workdir_made(ctx):
                # Inline, not in a thread: unlinking a few files is cheaper than the thread hop.
                shutil.rmtree(ctx.workdir, ignore_errors=True)
            if ran_s is None:
                ran_s = self._free_slot(running, started)
            self.metrics.tasks.labels(r.name, outcome).inc()
            self.metrics.task_seconds.labels(r.name, outcome).observe(ran_s)

    def _free_slot(self, running: Running, started: float) -> float:
        """The work is over: its slot is free before the report goes out, which may ride on the
        next fetch and so be answered only when that fetch is (see FetchLoop). Returns how long
        the task ran."""
        self.running.pop(running.task_id, None)
        self.metrics.in_flight.labels(running.runnable.name).dec()
        self.capacity.changed.set()
        return time.perf_counter() - started

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
            _pools={k: self.pools[k].client(self.settings.timeout_for(r.name), running.usage) for k in kinds},
            _progress=running.progress,
            _cancel_requested=lambda: running.cancel_requested,
            _on_progress=on_progress,
            _usage=running.usage,
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

    async def _heartbeat_loop(self, running: Running, lease_s: float, began: float) -> None:
        """From ``began`` (the attempt's start, monotonic): a heartbeat each third of the lease,
        sooner (but at most once a second) when progress moves."""
        interval = _heartbeat_interval(lease_s)
        lease_left_until = began + lease_s
        last_sent = began
        retry_in: float | None = None  # set while heartbeats fail: the next try comes sooner
        while True:
            next_due = last_sent + (interval if retry_in is None else min(interval, retry_in))
            try:
                await asyncio.wait_for(running.progress_changed.wait(), timeout=max(0.0, next_due - time.monotonic()))
                # Progress moved: push it soon, but not more than once a second per task.
                await asyncio.sleep(max(0.0, last_sent + PROGRESS_HEARTBEAT_MIN_S - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            running.progress_changed.clear()
            progress = {"percent": running.progress.percent, "message": running.progress.message}
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
                # A 503 (database restarting) or a lost connection: try again soon, backing off
                # (0.5 s, doubling), never later than the regular schedule would have.
                retry_in = HEARTBEAT_RETRY_S if retry_in is None else retry_in * 2
                log.warning("heartbeat failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, min(interval, retry_in))
                continue
            retry_in = None  # back on the regular schedule, counted from this heartbeat
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
            await self._report(tid, "complete", lease, output=output, compute_s=running.usage.seconds)
            for kind in running.runnable.model_servers:
                self.capacity.resume(kind)
            log.info("task completed")
            return "completed"
        if isinstance(error, ModelServerUnavailable):
            pause = self.capacity.pause(error)
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
            compute_s=running.usage.seconds,
        )
        return "failed_retryable" if error.retryable else "failed"

    async def _report(self, task_id: str, action: str, lease_id: str, **kwargs: Any) -> None:
        """complete / fail / release, retried through brief API trouble; a lost lease is logged, not raised."""
        # Completions share requests (see completions.py); fail and release are rare enough alone.
        call: Callable[..., Awaitable[Any]] = (
            self.completions.complete if action == "complete" else getattr(self.client, action)
        )
        tries = 1
        try:
            try:
                await call(task_id, lease_id, **kwargs)
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                # Only a report that met trouble pays for the retry machinery (a tenth of a
                # millisecond a task otherwise): the first try is made above, the rest here,
                # after the first backoff's wait.
                await asyncio.sleep(REPORT_RETRY_S)
                async for attempt in AsyncRetrying(
                    stop=stop_after_delay(30), wait=wait_exponential(multiplier=REPORT_RETRY_S, max=5),
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
