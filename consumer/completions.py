"""Completions that finish together reach the API in one request.

While one ``POST /api/comm/tasks/complete`` is in flight, further completions queue and go in
the next one, so a consumer finishing many short tasks pays one HTTP round trip per batch
instead of one per task. There is no timer: a lone completion is sent at once, so nothing waits
for company. Each item is still fenced on its own lease by the API; a caller gets its own
item's answer (``LeaseLost`` for a stale lease), exactly as from ``ConsumerClient.complete``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

from taskfleet import errors
from taskfleet.client import ConsumerClient

# The API refuses bodies over TASKFLEET_MAX_BODY_MB (1 MB by default): a big output goes on its
# own through the single-task route, and a batch stops growing well before that limit.
ALONE_BYTES = 64 * 1024
BATCH_BYTES = 256 * 1024
BATCH_ITEMS = 100


class CompletionBatcher:
    def __init__(self, client: ConsumerClient) -> None:
        self._client = client
        self._queued: deque[tuple[str, str, Any, int, asyncio.Future]] = deque()
        self._sender: asyncio.Task | None = None

    async def complete(self, task_id: str, lease_id: str, output: Any) -> dict[str, Any]:
        size = len(json.dumps(output, default=str))
        if size > ALONE_BYTES:
            return await self._client.complete(task_id, lease_id, output)
        future = asyncio.get_running_loop().create_future()
        self._queued.append((task_id, lease_id, output, size, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all())
        return await future

    def _next_batch(self) -> list[tuple[str, str, Any, int, asyncio.Future]]:
        batch, total = [], 0
        while self._queued and len(batch) < BATCH_ITEMS:
            size = self._queued[0][3]
            if batch and total + size > BATCH_BYTES:
                break
            batch.append(self._queued.popleft())
            total += size
        return batch

    async def _send_all(self) -> None:
        while self._queued:
            batch = self._next_batch()
            try:
                results = await self._client.complete_many([(t, lease, out) for t, lease, out, _, _ in batch])
            except asyncio.CancelledError:
                for *_, future in batch:
                    future.cancel()
                raise
            except Exception as exc:
                # The whole request failed (API down, 5xx…): every caller sees it and retries as
                # it would a single complete; the fence makes a resend of a landed one harmless.
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), result in zip(batch, results):
                if future.done():
                    continue
                if result.get("error"):
                    code, message = result["error"]["code"], result["error"].get("message", "")
                    cls = errors.LeaseLost if code == "lease_lost" else errors.NotFound
                    future.set_exception(cls(message, code=code))
                else:
                    future.set_result(result)

    async def aclose(self) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        for *_, future in self._queued:
            if not future.done():
                future.cancel()
        self._queued.clear()
