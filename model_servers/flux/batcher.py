"""Request batching and LoRA isolation in front of the engine.

One dispatcher coroutine owns the device. It waits for a free GPU slot, then takes the oldest
waiting job together with every other waiting job that can share its pipeline call (same size,
steps, guidance, sequence length and LoRA at the same weight), up to ``max_batch`` images. Jobs
wait only while the device is busy, so an idle server adds no latency and a busy one fills its
calls.

LoRA isolation: adapters live in the one shared transformer, so a pipeline call sees whatever
adapter is active while it runs. Calls may overlap (``gpu_slots`` > 1) only when they use the same
adapter setting; a call that needs another one waits until the running calls have finished, then
switches. Jobs are taken in arrival order, so a LoRA change cannot be starved.

A call of several requests that runs out of memory is run again request by request, so a request
that fits alone is not failed for the company it was batched with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from model_servers.base import OutOfMemory

log = logging.getLogger("model_servers.flux")


class Engine(Protocol):
    def use_lora(self, name: str | None, weight: float) -> None: ...

    def generate(self, prompts: list[str], seeds: list[int], **params: Any) -> list[Any]: ...


@dataclass(frozen=True)
class CallParams:
    """What must be equal for jobs to share one pipeline call."""

    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    max_sequence_length: int
    lora_name: str | None
    lora_weight: float

    @property
    def lora(self) -> tuple[str, float] | None:
        return (self.lora_name, self.lora_weight) if self.lora_name else None

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "max_sequence_length": self.max_sequence_length,
        }


@dataclass
class Job:
    params: CallParams
    prompt: str
    seeds: list[int]
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchResult:
    images: list[Any]
    batch_images: int  # images in the pipeline call this job rode in
    batch_requests: int


class Batcher:
    def __init__(self, engine: Engine, *, gpu_slots: int, max_batch: int) -> None:
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self._slots = asyncio.Semaphore(max(1, gpu_slots))
        self._pending: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._active_lora: Any = object()  # unknown until the first call sets it
        self._task: asyncio.Task | None = None
        self._runs: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch(), name="flux-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            if not job.future.done():
                job.future.cancel()
        for run in list(self._runs):
            with contextlib.suppress(BaseException):
                await run

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def submit(self, params: CallParams, prompt: str, seeds: list[int]) -> BatchResult:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(Job(params, prompt, seeds, future))
        self._wakeup.set()
        # If the caller goes away the future is cancelled; the dispatcher skips cancelled jobs.
        return await future

    def _take_batch(self) -> list[Job]:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        if not self._pending:
            return []
        first = self._pending.popleft()
        batch, images = [first], len(first.seeds)
        kept: deque[Job] = deque()
        while self._pending:
            job = self._pending.popleft()
            fits = images + len(job.seeds) <= self.max_batch
            if fits and job.params == first.params and not job.future.done():
                batch.append(job)
                images += len(job.seeds)
            elif not job.future.done():
                kept.append(job)
        self._pending = kept
        return batch

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = self._take_batch()
                while not batch:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    batch = self._take_batch()
                params = batch[0].params
                if params.lora != self._active_lora:
                    await self._idle.wait()
                    try:
                        await asyncio.to_thread(self.engine.use_lora, params.lora_name, params.lora_weight)
                    except BaseException as exc:
                        self._active_lora = object()
                        self._fail(batch, exc)
                        self._slots.release()
                        if isinstance(exc, asyncio.CancelledError):
                            raise
                        continue
                    self._active_lora = params.lora
            except asyncio.CancelledError:
                raise
            except BaseException:
                self._slots.release()
                raise
            self._running += 1
            self._idle.clear()
            run = asyncio.create_task(self._run(batch))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)

    async def _run(self, batch: list[Job]) -> None:
        try:
            try:
                await self._call(batch)
            except OutOfMemory:
                if len(batch) == 1:
                    raise
                # The batch may be what did not fit, not any one request: each gets a call of its
                # own before an out-of-memory failure is counted against it.
                log.warning("a call of %d requests ran out of memory; running them one by one", len(batch))
                for job in batch:
                    if job.future.done():
                        continue
                    try:
                        await self._call([job])
                    except Exception as exc:
                        self._fail([job], exc)
        except BaseException as exc:
            self._fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()
            self._slots.release()

    async def _call(self, batch: list[Job]) -> None:
        """One pipeline call for ``batch``; each job's future gets its images."""
        prompts = [job.prompt for job in batch for _ in job.seeds]
        seeds = [seed for job in batch for seed in job.seeds]
        images = await asyncio.to_thread(self.engine.generate, prompts, seeds, **batch[0].params.pipeline_kwargs())
        at = 0
        for job in batch:
            n = len(job.seeds)
            if not job.future.done():
                job.future.set_result(BatchResult(images[at : at + n], len(seeds), len(batch)))
            at += n

    @staticmethod
    def _fail(batch: list[Job], exc: BaseException) -> None:
        for job in batch:
            if not job.future.done():
                if isinstance(exc, asyncio.CancelledError):
                    job.future.cancel()
                else:
                    job.future.set_exception(exc)
