"""The SSRF guard (docs/api.md, "Input safety") for every URL the fleet fetches on a caller's behalf.

``check`` refuses a URL up front (scheme, syntax, every address its host resolves to);
``transport`` gives an httpx transport that checks again at connect time, for every connection,
and then connects to the very address it checked. That second check is what covers redirects
(each hop opens its own connection) and DNS rebinding (no second lookup between check and use).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Iterable, Sequence

import httpx
from httpcore import AsyncNetworkBackend, AsyncNetworkStream
from httpcore._backends.auto import AutoBackend

from taskfleet.errors import UrlRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_RESOLVE_TIMEOUT_S = 10.0


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 spelling routes to (mapped, 6to4, NAT64), if any.

    ``::ffff:127.0.0.1`` is loopback in disguise; judging it as IPv6 alone would miss that.
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True for addresses reachable on the public internet; loopback, private, link-local
    (cloud metadata at 169.254.169.254), shared/CGNAT (Alibaba's metadata at 100.100.100.200),
    unspecified, reserved and multicast addresses are not."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return is_public_address(inner)
        if ip.teredo is not None:
            server, client = ip.teredo
            return is_public_address(server) and is_public_address(client)
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_private
    )


class UrlGuard:
    def __init__(self, allowlist: Sequence[str] = (), schemes: Iterable[str] = ("http", "https")) -> None:
        self.schemes = frozenset(s.lower() for s in schemes)
        self._hosts: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowlist:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self._hosts.add(entry.rstrip("."))

    @classmethod
    def from_setting(cls, allowlist: str | Sequence[str] | None, **kw: Any) -> "UrlGuard":
        """From ``TASKFLEET_URL_ALLOWLIST``-style input: a comma-separated string or a list."""
        if isinstance(allowlist, str):
            allowlist = [part for part in allowlist.split(",") if part.strip()]
        return cls(allowlist or (), **kw)

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._hosts

    def address_allowed(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self._networks if net.version == ip.version):
            return True
        return is_public_address(ip)

    def parse(self, url: str | httpx.URL) -> httpx.URL:
        """Syntax and scheme checks, no network."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise UrlRefused(f"not a valid URL: {exc}", code="url_invalid") from None
        if parsed.scheme not in self.schemes:
            raise UrlRefused(
                f"scheme {parsed.scheme or '(none)'!r} is not allowed (allowed: {', '.join(sorted(self.schemes))})",
                code="url_scheme_not_allowed",
            )
        if not parsed.host:
            raise UrlRefused("URL has no host", code="url_invalid")
        if parsed.userinfo:
            # Credentials in URLs end up in logs and task records; callers must use headers or presigned URLs.
            raise UrlRefused("URLs with embedded credentials are not accepted", code="url_invalid")
        return parsed

    async def check(self, url: str | httpx.URL) -> None:
        """Refuse ``url`` unless its scheme is allowed and every address its host resolves to is public."""
        parsed = self.parse(url)
        if parsed.scheme in ("http", "https"):
            await self.resolve(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return its addresses, refusing if any one of them is not allowed.

        Every address counts, not just the first: a name with one public and one private record
        could otherwise be steered to the private one by a later lookup or a connect fallback.
        """
        addresses = await _getaddrinfo(host, port)
        if self.host_allowed(host):
            return addresses
        for addr in addresses:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
            if not self.address_allowed(ip):
                raise UrlRefused(
                    f"{host} resolves to {ip}, a loopback, private, link-local or metadata address",
                    code="url_private_address",
                )
        return addresses

    def transport(self, **httpx_transport_kwargs: Any) -> httpx.AsyncBaseTransport:
        """An ``httpx.AsyncHTTPTransport`` whose every TCP connection is checked, then pinned to the checked IP."""
        for forbidden in ("proxy", "uds"):
            if httpx_transport_kwargs.get(forbidden):
                raise ValueError(f"a guarded transport cannot use {forbidden!r}: it would bypass the address check")
        transport = httpx.AsyncHTTPTransport(**httpx_transport_kwargs)
        # httpx 0.28 has no public way to hand httpcore a network backend; its pool keeps the one it
        # passes to every new connection in ``_network_backend``, so swapping it there covers them all.
        transport._pool._network_backend = GuardedNetworkBackend(self)  # type: ignore[attr-defined]
        return transport


async def _getaddrinfo(host: str, port: int) -> list[str]:
    host = host.strip("[]")
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=_RESOLVE_TIMEOUT_S
        )
    except (socket.gaierror, UnicodeError, asyncio.TimeoutError) as exc:
        transient = isinstance(exc, asyncio.TimeoutError) or getattr(exc, "errno", None) == socket.EAI_AGAIN
        raise UrlRefused(f"cannot resolve {host}: {exc}", code="url_unresolvable", retryable=transient) from None
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        if sockaddr[0] not in addresses:
            addresses.append(sockaddr[0])
    if not addresses:
        raise UrlRefused(f"{host} has no addresses", code="url_unresolvable")
    return addresses


class GuardedNetworkBackend(AsyncNetworkBackend):
    """httpcore network backend: resolve, check every address, connect to a checked one."""

    def __init__(self, guard: UrlGuard, inner: AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncNetworkStream:
        addresses = await self._guard.resolve(host, port)
        last_exc: Exception | None = None
        for addr in addresses:
            try:
                return await self._inner.connect_tcp(
                    addr, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except Exception as exc:  # httpcore.ConnectError / ConnectTimeout: try the next address
                last_exc = exc
        assert last_exc is not None
        raise last_exc

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None):
        raise UrlRefused("unix sockets are never fetched for callers", code="url_scheme_not_allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
