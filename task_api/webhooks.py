"""Webhook delivery on terminal states: signed, retried, off the request path, restart-safe.

A delivery is a row written in the same transaction as the state change, so a crash between
finishing a task and notifying about it loses nothing: the sender finds the row after restart.
Retries are rows too (attempts + next_at), which is why this is not a tenacity loop: tenacity
keeps its schedule in memory, and these must outlive the process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

import httpx

from task_api.schemas import task_json
from task_api.store import Store, sql
from taskfleet.errors import TaskfleetError, Unavailable
from taskfleet.urlguard import UrlGuard

log = logging.getLogger("taskfleet.api.webhooks")


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(
        self,
        store: Store,
        *,
        secret: str,
        retry_delays: list[float],
        guard: UrlGuard,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.secret = secret
        self.delays = retry_delays  # len(delays) retries after the first try
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            transport=transport or guard.transport(),
            timeout=timeout_s,
            follow_redirects=False,  # a redirect is an answer, not an invitation to go elsewhere
            trust_env=False,
        )
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                sent = await self.send_due()
            except Unavailable as exc:
                log.warning("webhook pass skipped: %s", exc.message)
                sent = 0
            except Exception:  # the database is away for a moment: keep the loop alive
                log.exception("webhook pass failed")
                sent = 0
            if sent:
                continue
            next_at = await self._next_at()
            timeout = 5.0 if next_at is None else max(0.05, min(5.0, next_at - time.time()))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _next_at(self) -> float | None:
        try:
            return await self.store.fetchval(sql.NEXT_WEBHOOK_AT)
        except Exception:
            return None

    async def send_due(self) -> int:
        due = await self.store.claim_webhooks({"now": time.time(), "inflight_s": self.timeout_s + 30, "limit": 20})
        if due:
            await asyncio.gather(*(self._deliver(d) for d in due))
        return len(due)

    async def _deliver(self, delivery: dict) -> None:
        db = self.store
        row = await db.fetchrow(sql.SELECT_TASK, {"id": delivery["task_id"]})
        if row is None:
            await db.execute(sql.WEBHOOK_DELIVERED, {"id": delivery["id"]})
            return
        body = json.dumps(task_json(row), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "taskfleet-webhook/1"}
        if self.secret:
            headers["X-Taskfleet-Signature"] = sign(self.secret, body)
        error = None
        try:
            response = await self._http.post(delivery["url"], content=body, headers=headers)
            if response.is_success:
                await db.execute(sql.WEBHOOK_DELIVERED, {"id": delivery["id"]})
                return
            error = f"HTTP {response.status_code}"
        except TaskfleetError as exc:  # refused by the URL guard
            error = f"{exc.code}: {exc.message}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        tried = delivery["attempts"] + 1
        give_up = tried > len(self.delays)
        delay = 0.0 if give_up else self.delays[tried - 1]
        log.warning("webhook for %s failed (%s), try %d%s", delivery["task_id"], error, tried, "; giving up" if give_up else "")
        await db.execute(
            sql.WEBHOOK_FAILED,
            {"id": delivery["id"], "error": error, "next_at": time.time() + delay, "give_up": give_up},
        )

    async def aclose(self) -> None:
        await self._http.aclose()
