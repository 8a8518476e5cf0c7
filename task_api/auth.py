"""Bearer-token auth: producer, consumer and admin token sets; constant-time comparison."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from typing import Awaitable, Callable

from fastapi import Request

from taskfleet.errors import ConfigError, Forbidden, Unauthorized

log = logging.getLogger("taskfleet.api.auth")

# Which token kinds each route kind accepts.
ALLOWED = {"producer": ("producer", "admin"), "consumer": ("consumer", "admin"), "admin": ("admin",)}


def bind_addresses(host: str) -> list[str]:
    """The addresses a server bound to ``host`` listens on, resolved as asyncio's create_server
    resolves them for uvicorn: an empty host is every interface, a name each address it has.
    None at all when the name does not resolve."""
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return []
    return sorted({info[4][0] for info in infos})


def is_loopback_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def loopback_only(addresses: list[str]) -> bool:
    return bool(addresses) and all(is_loopback_address(a) for a in addresses)


class Authenticator:
    def __init__(self, token_sets: dict[str, list[str]], *, host: str) -> None:
        self._tokens = [(kind, tok.encode()) for kind, toks in token_sets.items() for tok in toks]
        self.open = not self._tokens
        if not self.open:
            return
        # Decided on the addresses the server will listen on, not on the string: "" and
        # "0.0.0.0" are every interface, and a name is whatever it resolves to.
        addresses = bind_addresses(host)
        bound = ", ".join(addresses) or "no address it resolves to"
        if not loopback_only(addresses):
            raise ConfigError(
                f"no API tokens configured and bound to {host!r} ({bound}): refusing to run open on a "
                "non-loopback address (set TASKFLEET_PRODUCER_TOKENS / _CONSUMER_TOKENS / _ADMIN_TOKENS)"
            )
        log.warning("!!! NO API TOKENS CONFIGURED: the task API is OPEN to anyone on %s (%s: loopback only) !!!", host, bound)

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
