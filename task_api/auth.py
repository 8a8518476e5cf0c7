"""Bearer-token auth: producer, consumer and admin token sets; constant-time comparison.

The operator console signs in once with an admin token and then holds a session cookie instead
(HttpOnly, SameSite=Strict): ``<expiry>.<HMAC of it keyed by that admin token>``, so any
replica checks it without shared state and the token itself never reaches the browser's storage.
A write made with the cookie must also carry ``X-CSRF-Token``, a second HMAC of the same
expiry that the console reads from its own readable cookie (a signed double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from typing import Awaitable, Callable

from fastapi import Request

from task_api.settings import ADMIN_PRODUCER, DEFAULT_PRODUCER
from taskfleet.errors import ConfigError, Forbidden, Unauthorized

log = logging.getLogger("taskfleet.api.auth")

# Which token kinds each route kind accepts.
ALLOWED = {"producer": ("producer", "admin"), "consumer": ("consumer", "admin"), "admin": ("admin",)}

SESSION_COOKIE = "taskfleet_session"
CSRF_COOKIE = "taskfleet_csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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


def producer_of(request: Request) -> str:
    """The producer a request acts for (set by the producer routes' auth dependency)."""
    return getattr(request.state, "producer", DEFAULT_PRODUCER)


class Authenticator:
    def __init__(
        self, token_sets: dict[str, list[str]], *, host: str, producer_names: dict[str, str] | None = None
    ) -> None:
        self._tokens = [(kind, tok.encode()) for kind, toks in token_sets.items() for tok in toks]
        # A producer token's producer, by index into _tokens (admin tokens act as ADMIN_PRODUCER).
        names = producer_names or {}
        self._names = [
            names.get(tok.decode(), DEFAULT_PRODUCER) if kind == "producer" else ADMIN_PRODUCER
            for kind, tok in self._tokens
        ]
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
        return self.identify(presented)[0]

    def identify(self, presented: str) -> tuple[str | None, str]:
        """(token kind or None, the producer it acts for)."""
        # Compare against every token, without stopping early, so timing says nothing about
        # which token (or which prefix) matched.
        candidate = presented.encode()
        found: tuple[str | None, str] = (None, DEFAULT_PRODUCER)
        for (kind, token), name in zip(self._tokens, self._names):
            if hmac.compare_digest(candidate, token) and found[0] is None:
                found = (kind, name)
        return found

    # -- the console's session --------------------------------------------------------------
    def _admin_tokens(self) -> list[bytes]:
        return [token for kind, token in self._tokens if kind == "admin"]

    @staticmethod
    def _sign(token: bytes, purpose: str, expiry: int) -> str:
        return hmac.new(token, f"{purpose}:{expiry}".encode(), hashlib.sha256).hexdigest()

    def open_session(self, presented: str, now: float | None = None) -> tuple[str, str] | None:
        """(session cookie, CSRF token) for an admin token; None for any other."""
        if self.kind_of(presented) != "admin":
            return None
        expiry = int((now or time.time()) + SESSION_S)
        token = presented.encode()
        return f"{expiry}.{self._sign(token, 'session', expiry)}", f"{expiry}.{self._sign(token, 'csrf', expiry)}"

    def session_valid(self, cookie: str, csrf: str | None = None, now: float | None = None) -> bool:
        """Whether ``cookie`` is a live session signed by a configured admin token (and, when
        ``csrf`` is given, whether that is the session's CSRF token)."""
        expiry_text, _, signature = cookie.partition(".")
        if not expiry_text.isdigit() or int(expiry_text) < (now or time.time()):
            return False
        expiry = int(expiry_text)
        valid = False
        for token in self._admin_tokens():  # every one, as kind_of does
            ok = hmac.compare_digest(signature.encode(), self._sign(token, "session", expiry).encode())
            if ok and csrf is not None:
                ok = hmac.compare_digest(csrf.encode(), f"{expiry}.{self._sign(token, 'csrf', expiry)}".encode())
            valid = valid or ok
        return valid

    def _session_kind(self, request: Request) -> str | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        if not self.session_valid(cookie):
            raise Unauthorized("console session expired or invalid: sign in again")
        if request.method not in SAFE_METHODS and not self.session_valid(cookie, request.headers.get(CSRF_HEADER, "")):
            raise Forbidden("missing or wrong X-CSRF-Token for a console session", code="csrf_failed")
        return "admin"

    def require(self, route_kind: str) -> Callable[[Request], Awaitable[None]]:
        allowed = ALLOWED[route_kind]

        # async: a plain def dependency would be run in a worker thread on every request.
        async def dependency(request: Request) -> None:
            if self.open:
                return
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if not header and self._session_kind(request) in allowed:
                request.state.producer = ADMIN_PRODUCER
                return
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized("missing bearer token")
            kind, request.state.producer = self.identify(token.strip())
            if kind is None:
                raise Unauthorized("unknown token")
            if kind not in allowed:
                raise Forbidden(f"a {kind} token cannot use {route_kind} routes")

        return dependency
