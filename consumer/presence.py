"""Tells the task API that this consumer is alive: its workflows, load and model servers.

One small request every few seconds (the API says how often), so the operator's list of
consumers (``GET /api/consumers``) shows who is working on what, and drops a consumer that died.
A failed report is only logged: it never stops the consumer from working.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import httpx

from taskfleet.client import ConsumerClient
from taskfleet.errors import NotFound, TaskfleetError

log = logging.getLogger("consumer")

FIRST_INTERVAL_S = 5.0


async def report_forever(client: ConsumerClient, snapshot: Callable[[], dict[str, Any]]) -> None:
    """Report ``snapshot()`` now and then again each time the API asks, until cancelled."""
    every_s = FIRST_INTERVAL_S
    while True:
        try:
            every_s = await client.report(snapshot())
        except NotFound:
            log.info("the task API keeps no consumer registry; not reporting")
            return
        except (TaskfleetError, httpx.HTTPError) as exc:
            log.debug("consumer report failed: %s", exc)
        await asyncio.sleep(max(1.0, every_s))
