"""Real HTTP servers the storage tests run against: moto (S3), gcp-storage-emulator (GCS), a
uvicorn-in-a-thread helper, and a fault-injecting reverse/forward proxy placed between a
backend and its server."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvicorn

BIN = Path(sys.executable).parent
MiB = 1 << 20
BIG_SIZE = 200 * MiB
# Retries in tests keep the production schedule's shape (three retries) at a hundredth of the wait.
FAST_RETRIES = (0.01, 0.02, 0.04)
S3_BUCKET = "taskfleet-test"
GCS_BUCKET = "taskfleet-test-gcs"
R2_ENDPOINT = "http://testaccount.r2.cloudflarestorage.com"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as sock:
        return sock.getsockname()[1]


class Subprocess:
    """A server started as a child process, polled until it answers."""

    def __init__(self, argv: list[str], health_url: str, env: dict[str, str] | None = None) -> None:
        self.log = open(os.devnull, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {self.proc.returncode}")
            try:
                if httpx.get(health_url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv[0]} did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def start_moto() -> tuple[Subprocess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return Subprocess([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], url + "/moto-api/"), url


def start_gcs_emulator() -> tuple[Subprocess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "gcp-storage-emulator"), "start", "-H", "127.0.0.1", "--port", str(port), "--in-memory", "-q"]
    return Subprocess(argv, url + "/"), url


class ThreadedUvicorn:
    """An ASGI app served by uvicorn on a loopback port from a background thread."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self._sock = free_socket()
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, interface="asgi3")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self._sock.close()


HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int | None  # answer this status instead of forwarding
    times: int
    cut_after: int | None = None  # or: forward, but drop the connection after this many body bytes
    query: re.Pattern[str] | None = None
    skip: int = 0  # let this many matching requests through first
    after_upstream: bool = False  # deliver the request upstream, then answer ``status`` anyway
    hits: int = 0


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    faulted: bool


@dataclass
class FaultProxy:
    """Forwards every request to ``upstream`` unchanged, except those matching a fault rule.

    Also works as a forward proxy (absolute-form request targets, as an HTTP_PROXY client
    sends), which lets a client talk to a made-up host name such as an R2 endpoint.
    """

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None
        self._server = ThreadedUvicorn(self.app)
        self.url = self._server.url

    def fail(
        self,
        method: str,
        path: str = ".*",
        *,
        status: int | None = 503,
        times: int = 1,
        cut_after: int | None = None,
        query: str | None = None,
        skip: int = 0,
        after_upstream: bool = False,
    ) -> Fault:
        rule = Fault(
            method, re.compile(path), status, times, cut_after, re.compile(query) if query else None, skip, after_upstream
        )
        with self._lock:
            self.faults.append(rule)
        return rule

    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    def requests(self, method: str | None = None, path: str = ".*", query: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self.seen
                if (method is None or s.method == method)
                and re.search(path, s.path)
                and (query is None or re.search(query, s.query))
            ]

    def stop(self) -> None:
        self._server.stop()

    def _match(self, method: str, path: str, query: str) -> Fault | None:
        with self._lock:
            for rule in self.faults:
                if (
                    rule.hits < rule.times
                    and rule.method == method
                    and rule.path.search(path)
                    and (rule.query is None or rule.query.search(query))
                ):
                    if rule.skip:
                        rule.skip -= 1
                        continue
                    rule.hits += 1
                    return rule
        return None

    async def app(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(300), follow_redirects=False, trust_env=False)
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        target = raw_path.decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        if target.startswith("http://"):  # absolute-form target (h11 keeps it): keep the path
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        host = next((v for k, v in headers if k.lower() == "host"), "")
        # A request for some other host came through us as an HTTP proxy.
        forward_proxied = host != urlsplit(self.url).netloc
        path = target
        query = scope.get("query_string", b"").decode("latin-1")
        rule = self._match(method, urlsplit(path).path, query)
        with self._lock:
            self.seen.append(Seen(method, path, query, {k.lower(): v for k, v in headers}, bool(rule and rule.status)))

        if rule is not None and rule.status is not None:
            if rule.after_upstream:
                await self._forward(method, path, query, headers, receive, forward_proxied)
            else:
                while (await receive()).get("more_body"):
                    pass
            body = b"injected fault"
            await send(
                {
                    "type": "http.response.start",
                    "status": rule.status,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        await self._respond(method, path, query, headers, receive, send, rule, forward_proxied)

    def _request(self, method, path, query, headers, receive, forward_proxied):  # type: ignore[no-untyped-def]
        async def body():  # type: ignore[no-untyped-def]
            while True:
                message = await receive()
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        out_headers = [(k, v) for k, v in headers if k.lower() not in HOP_HEADERS]
        if forward_proxied:
            # Pretend to be the made-up host: hand the upstream its own name.
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "host"]
            out_headers.append(("host", urlsplit(self.upstream).netloc))
        url = self.upstream + path + (f"?{query}" if query else "")
        has_length = any(k.lower() == "content-length" for k, _ in out_headers)
        return self._client.build_request(  # type: ignore[union-attr]
            method, url, headers=out_headers, content=body() if has_length or method in ("POST", "PUT") else None
        )

    async def _forward(self, method, path, query, headers, receive, forward_proxied):  # type: ignore[no-untyped-def]
        response = await self._client.send(self._request(method, path, query, headers, receive, forward_proxied))  # type: ignore[union-attr]
        await response.aclose()

    async def _respond(self, method, path, query, headers, receive, send, rule, forward_proxied):  # type: ignore[no-untyped-def]
        request = self._request(method, path, query, headers, receive, forward_proxied)
        response = await self._client.send(request, stream=True)  # type: ignore[union-attr]
        try:
            resp_headers = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in response.headers.multi_items()
                if k.lower() not in HOP_HEADERS
            ]
            await send({"type": "http.response.start", "status": response.status_code, "headers": resp_headers})
            sent = 0
            async for chunk in response.aiter_raw():
                if rule is not None and rule.cut_after is not None and sent + len(chunk) > rule.cut_after:
                    chunk = chunk[: rule.cut_after - sent]
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    # Raising after the response started makes uvicorn drop the connection.
                    raise ConnectionAbortedError("injected: connection cut mid-body")
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()
