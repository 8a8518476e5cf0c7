"""Input downloads: the SSRF guard (docs/api.md, "Input safety"), redirects, the size cap, storage URLs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from consumer.errors import InputFetchError
from consumer.inputs import InputFetcher
from storage import open_storage
from taskfleet.errors import InputTooLarge, UrlRefused
from taskfleet.urlguard import UrlGuard

MB = 1 << 20

REFUSED = [
    ("http://127.0.0.1/x", "url_private_address"),
    ("http://localhost:8000/x", "url_private_address"),
    ("http://0.0.0.0/x", "url_private_address"),
    ("http://10.1.2.3/x", "url_private_address"),
    ("http://172.16.5.4/x", "url_private_address"),
    ("http://172.31.255.255/x", "url_private_address"),
    ("http://192.168.1.1/x", "url_private_address"),
    ("http://169.254.169.254/latest/meta-data/", "url_private_address"),
    ("http://100.100.100.200/latest/meta-data/", "url_private_address"),  # Alibaba metadata (CGNAT range)
    ("http://[::1]/x", "url_private_address"),
    ("http://[::ffff:127.0.0.1]/x", "url_private_address"),
    ("http://[::ffff:169.254.169.254]/x", "url_private_address"),
    ("http://[fd00:ec2::254]/x", "url_private_address"),  # AWS metadata over IPv6
    ("http://[fe80::1]/x", "url_private_address"),
    ("http://2130706433/x", "url_private_address"),  # decimal 127.0.0.1
    ("http://017700000001/x", "url_private_address"),  # octal 127.0.0.1, one number
    ("http://0x7f000001/x", "url_private_address"),  # hex 127.0.0.1
    ("http://127.1/x", "url_private_address"),  # short form
    ("http://0177.0.0.1/x", "url_invalid"),  # dotted octal: refused before any lookup
    ("gopher://example.com/x", "url_scheme_not_allowed"),
    ("ftp://example.com/x", "url_scheme_not_allowed"),
    ("dict://example.com:11211/", "url_scheme_not_allowed"),
    ("file:///etc/passwd", "url_outside_storage_root"),
    ("file://localhost/etc/passwd", "url_outside_storage_root"),
    ("http://user:secret@example.com/x", "url_invalid"),
    ("http:///nohost", "url_invalid"),
]


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "storage"
    root.mkdir()
    return open_storage(root.as_uri())


@pytest.fixture
async def fetcher():
    f = InputFetcher(UrlGuard(allowlist=["127.0.0.2"]), max_bytes=1 * MB)
    yield f
    await f.aclose()


@pytest.fixture
def source(thread_server):
    """A file server on 127.0.0.2 (allow-listed), able to redirect and to stream without end."""
    app = FastAPI()
    app.state.sent = 0

    @app.get("/file")
    async def file():
        return Response(b"hello input", media_type="application/octet-stream")

    @app.get("/redirect")
    async def redirect(to: str):
        return RedirectResponse(to, status_code=302)

    @app.get("/endless")
    async def endless(request: Request):
        async def chunks():
            for _ in range(10_000):  # 640 MB if nobody stops reading
                # uvicorn drops writes to a closed connection silently; look for the disconnect.
                if await request.is_disconnected():
                    return
                app.state.sent += 64 * 1024
                yield b"\0" * (64 * 1024)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/declared-huge")
    async def declared_huge():
        async def chunks():
            app.state.sent += 1
            yield b"x"

        return StreamingResponse(chunks(), headers={"Content-Length": str(5 * MB)})

    @app.get("/missing")
    async def missing():
        return Response(status_code=404)

    server = thread_server(app, host="127.0.0.2")
    server.app = app
    return server


@pytest.mark.parametrize("url,code", REFUSED)
async def test_refused_urls(url, code, fetcher, store, tmp_path):
    dest = tmp_path / "in.bin"
    with pytest.raises(UrlRefused) as info:
        await fetcher.fetch(url, dest, storage=store)
    assert info.value.code == code, info.value.message
    assert info.value.retryable is False
    assert not dest.exists()


async def test_guard_check_matches_fetch_rules():
    guard = UrlGuard()
    for url, code in REFUSED:
        if url.startswith("file:"):
            continue  # storage rule, not the guard's
        with pytest.raises(UrlRefused) as info:
            await guard.check(url)
        expected = "url_scheme_not_allowed" if code == "url_scheme_not_allowed" else code
        assert info.value.code == expected, url


async def test_allowlist_by_ip_cidr_and_host():
    await UrlGuard(["127.0.0.0/8"]).check("http://127.0.0.5/x")
    await UrlGuard(["localhost"]).check("http://localhost/x")
    await UrlGuard(["::1"]).check("http://[::1]/x")
    with pytest.raises(UrlRefused):
        await UrlGuard(["127.0.0.2"]).check("http://127.0.0.1/x")


async def test_allowlisted_source_downloads(fetcher, store, source, tmp_path):
    dest = tmp_path / "in.bin"
    assert await fetcher.fetch(f"{source.url}/file", dest, storage=store) == len(b"hello input")
    assert dest.read_bytes() == b"hello input"


async def test_redirect_to_private_address_refused(fetcher, store, source, tmp_path):
    dest = tmp_path / "in.bin"
    # 127.0.0.2 is allow-listed, 127.0.0.1 is not: the hop is checked when its connection opens.
    target = f"http://127.0.0.1:{source.port}/file"
    with pytest.raises(UrlRefused) as info:
        await fetcher.fetch(f"{source.url}/redirect?to={target}", dest, storage=store)
    assert info.value.code == "url_private_address"
    with pytest.raises(UrlRefused) as info:
        await fetcher.fetch(f"{source.url}/redirect?to=http://169.254.169.254/latest/", dest, storage=store)
    assert info.value.code == "url_private_address"
    assert not dest.exists()


async def test_redirect_to_other_scheme_refused(fetcher, store, source, tmp_path):
    for to in ("gopher://example.com/", "file:///etc/passwd"):
        with pytest.raises(UrlRefused) as info:
            await fetcher.fetch(f"{source.url}/redirect?to={to}", tmp_path / "in.bin", storage=store)
        assert info.value.code == "url_scheme_not_allowed"


async def test_oversize_stopped_while_streaming(fetcher, store, source, tmp_path):
    dest = tmp_path / "in.bin"
    with pytest.raises(InputTooLarge) as info:
        await fetcher.fetch(f"{source.url}/endless", dest, storage=store)
    assert info.value.code == "input_too_large"
    assert info.value.retryable is False
    assert not dest.exists()
    await asyncio.sleep(0.3)
    # The server got to send only a sliver of the 640 MB: the rest was never read.
    assert source.app.state.sent < 64 * MB, source.app.state.sent


async def test_oversize_declared_refused_before_reading(fetcher, store, source, tmp_path):
    with pytest.raises(InputTooLarge):
        await fetcher.fetch(f"{source.url}/declared-huge", tmp_path / "in.bin", storage=store)


async def test_missing_source_fails_non_retryably(fetcher, store, source, tmp_path):
    with pytest.raises(InputFetchError) as info:
        await fetcher.fetch(f"{source.url}/missing", tmp_path / "in.bin", storage=store)
    assert (info.value.code, info.value.retryable) == ("input_not_found", False)


async def test_storage_urls_read_through_storage(fetcher, store, tmp_path):
    obj = await store.put_bytes("inputs/a.bin", b"stored bytes")
    for url in (obj.storage_url, store.storage_url_for("inputs/a.bin")):
        dest = tmp_path / "in.bin"
        assert await fetcher.fetch(url, dest, storage=store) == 12
        assert dest.read_bytes() == b"stored bytes"
    with pytest.raises(InputFetchError) as info:
        await fetcher.fetch(store.storage_url_for("inputs/nope.bin"), tmp_path / "x", storage=store)
    assert info.value.code == "input_not_found"


async def test_storage_input_size_capped(fetcher, store, tmp_path):
    obj = await store.put_bytes("inputs/big.bin", b"\0" * (2 * MB))
    with pytest.raises(InputTooLarge):
        await fetcher.fetch(obj.storage_url, tmp_path / "in.bin", storage=store)


@pytest.fixture(scope="module")
def moto_url():
    """A real S3-compatible server (moto in server mode) on loopback, with two buckets."""
    import os
    import subprocess
    import sys
    import time

    import boto3
    import httpx

    from support import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "moto did not start"
                time.sleep(0.1)
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        for bucket in ("fleet", "elsewhere"):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="fleet", Key="outputs/in/a.bin", Body=b"own bucket")
        s3.put_object(Bucket="elsewhere", Key="b/c.bin", Body=b"other bucket")
        yield url
    finally:
        proc.kill()
        proc.wait(10)


async def test_s3_inputs_go_through_storage(moto_url, tmp_path, monkeypatch):
    """s3:// inputs: the configured bucket, and another bucket reached with the same endpoint."""
    from consumer.runner import _open_storage
    from consumer.settings import ConsumerSettings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = ConsumerSettings(storage_url=f"s3://fleet/outputs?endpoint_url={moto_url}")
    store = _open_storage(settings)
    fetcher = InputFetcher(UrlGuard(), max_bytes=1 * MB, open_storage=lambda url: _open_storage(settings, url))
    try:
        dest = tmp_path / "a.bin"
        assert await fetcher.fetch("s3://fleet/outputs/in/a.bin", dest, storage=store) == len(b"own bucket")
        assert dest.read_bytes() == b"own bucket"
        dest = tmp_path / "c.bin"
        assert await fetcher.fetch("s3://elsewhere/b/c.bin", dest, storage=store) == len(b"other bucket")
        assert dest.read_bytes() == b"other bucket"
        with pytest.raises(InputFetchError) as info:
            await fetcher.fetch("s3://elsewhere/b/missing.bin", tmp_path / "m.bin", storage=store)
        assert info.value.code == "input_not_found"
    finally:
        await fetcher.aclose()
        await store.aclose()


async def test_file_url_escaping_the_root_is_refused(fetcher, store, tmp_path):
    (tmp_path / "secret.txt").write_text("not for tasks")
    root = store.storage_url_for("x").rsplit("/", 1)[0]
    for url in (f"{root}/../secret.txt", f"{root}/%2e%2e/secret.txt", (tmp_path / "secret.txt").as_uri()):
        with pytest.raises(UrlRefused) as info:
            await fetcher.fetch(url, tmp_path / "in.bin", storage=store)
        assert info.value.code == "url_outside_storage_root", url


async def test_guard_transport_checks_every_connection(source):
    """What the webhook sender uses: a plain httpx client on guard.transport()."""
    import httpx

    guard = UrlGuard(allowlist=["127.0.0.2"])
    async with httpx.AsyncClient(transport=guard.transport(), follow_redirects=True) as client:
        assert (await client.get(f"{source.url}/file")).content == b"hello input"
        with pytest.raises(UrlRefused) as info:
            await client.get(f"http://127.0.0.1:{source.port}/file")
        assert info.value.code == "url_private_address"
        with pytest.raises(UrlRefused):  # the allow-listed hop is fine, the next one is not
            await client.get(f"{source.url}/redirect?to=http://localhost:{source.port}/file")
