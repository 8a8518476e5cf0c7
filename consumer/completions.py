"""Completions that finish together reach the API in one request.

While one ``POST /api/comm/tasks/complete`` is in flight, further completions queue and go in
the next one, so a consumer finishing many short tasks pays one HTTP round trip per batch
instead of one per task. There is no timer: a lone completion is sent at once, so nothing waits
for company (``taskfleet.coalesce``). Each item is still fenced on its own lease by the API; a
caller gets its own item's answer (``LeaseLost`` for a stale lease), exactly as from
``ConsumerClient.complete``.
"""

from __future__ import annotations

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

    async def complete(self, task_id: str, lease_id: str, output: Any, compute_s: float = 0.0) -> dict[str, Any]:
        size = len(json.dumps(output, default=str))
        if size > ALONE_BYTES:
            return await self._client.complete(task_id, lease_id, output, compute_s)
        return await self._batches.submit((task_id, lease_id, output, size, request_id.get(), compute_s))

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
        await self._batches.aclose()
