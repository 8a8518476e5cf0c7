"""Bearer-token auth: producer, consumer and admin token sets; constant-time comparison."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Awaitable, Callable

from fastapi import Request

from taskfleet.errors import ConfigError, Forbidden, Unauthorized

log = logging.getLogger("taskfleet.api.auth")

# Which token kinds each route kind accepts.
ALLOWED = {"producer": ("producer", "admin"), "consumer": ("consumer", "admin"), "admin": ("admin",)}


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    def __init__(self, token_sets: dict[str, list[str]], *, host: str) -> None:
        self._tokens = [(kind, tok.encode()) for kind, toks in token_sets.items() for tok in toks]
        self.open = not self._tokens
        if self.open and not is_loopback(host):
            raise ConfigError(
                f"no API tokens configured and bound to {host}: refusing to run open on a "
                "non-loopback address (set TASKFLEET_PRODUCER_TOKENS / _CONSUMER_TOKENS / _ADMIN_TOKENS)"
            )
        if self.open:
            log.warning("!!! NO API TOKENS CONFIGURED: the task API is OPEN to anyone on %s (loopback only) !!!", host)

    def kind_of(self, presented: str) -> str | None:
        # Compare against every token, without stopping early, so timing says nothing about
        # which token (or which prefix) matched.
        candidate = presented.encode()
        found = None
        for kind, token in self._tokens:
            if hmac.compare_digest(candidate, token) and found is None:
                found = kind
        return found

    def require(self, route_kind: str) -> Callable[[Request], Awaitable[None]]:
        allowed = ALLOWED[route_kind]

        # async: a plain def dependency would be run in a worker thread on every request.
        async def dependency(request: Request) -> None:
            if self.open:
                return
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized("missing bearer token")
            kind = self.kind_of(token.strip())
            if kind is None:
                raise Unauthorized("unknown token")
            if kind not in allowed:
                raise Forbidden(f"a {kind} token cannot use {route_kind} routes")

        return dependency
