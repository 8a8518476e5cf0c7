"""Completions that finish together reach the API in one request.

While one ``POST /api/comm/tasks/complete`` is in flight, further completions queue and go in
the next one, so a consumer finishing many short tasks pays one HTTP round trip per batch
instead of one per task. There is no timer: a lone completion is sent at once, so nothing waits
for company (``taskfleet.coalesce``). Each item is still fenced on its own lease by the API; a
caller gets its own item's answer (``LeaseLost`` for a stale lease), exactly as from
``ConsumerClient.complete``.

Completions can also ride on the consumer's next fetch (``POST /api/comm/tasks/complete`` with
``fetch``): while the fetch loop holds the door open (``hold``), a completion waits for it instead
of going out alone, and the fetch loop sends it with its next long poll (``take``, ``answer``).
One request per task instead of two when tasks finish between fetches, as short ones do.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from taskfleet import errors
from taskfleet.client import ConsumerClient
from taskfleet.coalesce import Coalescer
from taskfleet.logs import current_task_id, request_id

# The API refuses bodies over TASKFLEET_MAX_BODY_MB (1 MB by default): a big output goes on its
# own through the single-task route, and a batch stops growing well before that limit.
ALONE_BYTES = 64 * 1024
BATCH_BYTES = 256 * 1024
BATCH_ITEMS = 100

# task_id, lease_id, output, its JSON size, the attempt's request id, its compute seconds
Item = tuple[str, str, Any, int, str | None, float]


class CompletionBatcher:
    def __init__(self, client: ConsumerClient) -> None:
        self._client = client
        self._batches: Coalescer[Item, dict[str, Any]] = Coalescer(
            self._send, max_items=BATCH_ITEMS, size=lambda item: item[3], max_size=BATCH_BYTES
        )
        self._riders: list[tuple[Item, asyncio.Future]] | None = None  # None: not holding
        self._rider_came = asyncio.Event()

    async def complete(self, task_id: str, lease_id: str, output: Any, compute_s: float = 0.0) -> dict[str, Any]:
        size = len(json.dumps(output, default=str))
        if size > ALONE_BYTES:
            return await self._client.complete(task_id, lease_id, output, compute_s)
        item = (task_id, lease_id, output, size, request_id.get(), compute_s)
        riders = self._riders
        if riders is not None and len(riders) < BATCH_ITEMS and sum(r[0][3] for r in riders) + size <= BATCH_BYTES:
            future = asyncio.get_running_loop().create_future()
            riders.append((item, future))
            self._rider_came.set()
            return await future
        return await self._batches.submit(item)

    # -- riding on the next fetch (FetchLoop) ----------------------------------------------------
    def hold(self) -> None:
        """From now on, completions wait to ride on the next fetch."""
        if self._riders is None:
            self._riders = []

    async def wait_riders(self, count: int, timeout_s: float) -> None:
        """Until ``count`` completions wait to ride, or ``timeout_s`` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._riders is not None and len(self._riders) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._rider_came.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._rider_came.wait()
            except TimeoutError:
                return

    def take(self) -> list[tuple[Item, asyncio.Future]]:
        """Stop holding; the completions that wait to ride, for the fetch to carry."""
        riders, self._riders = self._riders or [], None
        return riders

    def answer(self, riders: list[tuple[Item, asyncio.Future]], results: list[dict[str, Any]] | BaseException) -> None:
        """Each rider's answer from the fetch that carried it (or the error that request met)."""
        answers = [results] * len(riders) if isinstance(results, BaseException) else self._answers(results)
        for (_, future), answer in zip(riders, answers):
            if future.done():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    def send_alone(self, riders: list[tuple[Item, asyncio.Future]]) -> None:
        """Riders no fetch will carry (the fetch loop stopped, or has nothing to ask for) go the usual way."""
        for item, future in riders:
            sent = asyncio.ensure_future(self._batches.submit(item))
            sent.add_done_callback(lambda done, f=future: _copy(done, f))

    async def _send(self, batch: list[Item]) -> list[dict[str, Any] | Exception]:
        # A failed request (API down, 5xx…) raises here and reaches every caller in the batch,
        # who retries as it would a single complete; the fence makes a resend of a landed one
        # harmless.
        # This runs in the context of whichever completion started the drain: the request names
        # a task and its attempt's request id only when it carries just the one.
        alone = len(batch) == 1
        current_task_id.set(batch[0][0] if alone else None)
        request_id.set(batch[0][4] if alone else None)
        results = await self._client.complete_many([(t, lease, out, compute) for t, lease, out, _, _, compute in batch])
        return self._answers(results)

    @staticmethod
    def _answers(results: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        answers: list[dict[str, Any] | Exception] = []
        for result in results:
            if result.get("error"):
                code, message = result["error"]["code"], result["error"].get("message", "")
                cls = errors.LeaseLost if code == "lease_lost" else errors.NotFound
                answers.append(cls(message, code=code))
            else:
                answers.append(result)
        return answers

    async def aclose(self) -> None:
        self.send_alone(self.take())
        await self._batches.aclose()


def _copy(done: asyncio.Future, future: asyncio.Future) -> None:
    if future.done():
        return
    if done.cancelled():
        future.cancel()
    elif done.exception() is not None:
        future.set_exception(done.exception())
    else:
        future.set_result(done.result())
