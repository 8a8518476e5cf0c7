"""The API's own timers: lease expiry and timeouts, pending TTL, the fallback wake-up check, retention.

No external scheduler is needed; with several replicas each runs these, and the statements
are written so that running them twice at once does no harm.
"""

from __future__ import annotations

import asyncio
import logging

from task_api.fleet import Fleet
from task_api.metrics import ApiMetrics
from task_api.queue import Queue
from taskfleet.errors import Unavailable

log = logging.getLogger("taskfleet.api.housekeeping")

CONSUMER_RETENTION_S = 86400.0  # a consumer's row outlives its silence by a day, then goes


async def reap_forever(queue: Queue, metrics: ApiMetrics, interval_s: float) -> None:
    while True:
        try:
            for row in await queue.expire():
                outcome = "timed_out" if '"timed_out"' in (row.get("error") or "") else "lease_expired"
                metrics.attempts.labels(row["workflow"], outcome).inc()
            # Tasks still PENDING past their expires_at end FAILED `expired`: the same pass on
            # every replica, each task ended by exactly one of them (see sql.EXPIRE_PENDING_*).
            for row in await queue.expire_pending():
                metrics.expired.labels(row["workflow"]).inc()
            await queue.wake_ready()
        except Unavailable as exc:  # the database is away: one line a pass, not a traceback
            log.warning("reaper pass skipped: %s", exc.message)
        except Exception:
            log.exception("reaper pass failed")
        await asyncio.sleep(interval_s)


async def purge_forever(queue: Queue, fleet: Fleet, retention_s: float, interval_s: float) -> None:
    while True:
        try:
            removed = await queue.purge_finished(retention_s)
            if removed:
                log.info("retention removed %d finished tasks", removed)
            await fleet.purge(CONSUMER_RETENTION_S)
        except Unavailable as exc:
            log.warning("retention pass skipped: %s", exc.message)
        except Exception:
            log.exception("retention pass failed")
        await asyncio.sleep(interval_s)
