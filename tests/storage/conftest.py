"""Fixtures: a real moto S3 server, a real GCS emulator, fault-injecting proxies in front of
them, and one storage per backend under a fresh prefix for each test."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from storage import Storage, open_storage
from storage.http import create_files_app
from storage_testkit import (
    BIG_SIZE,
    FAST_RETRIES,
    GCS_BUCKET,
    R2_ENDPOINT,
    S3_BUCKET,
    FaultProxy,
    MiB,
    ThreadedUvicorn,
    start_gcs_emulator,
    start_moto,
)



@pytest.fixture(scope="session", autouse=True)
def _cloud_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        # No probing for a GCE metadata server that is not there (it costs seconds per client).
        mp.setenv("NO_GCE_CHECK", "true")
        for name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "STORAGE_EMULATOR_HOST",
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def moto_url(_cloud_env: None) -> Iterator[str]:
    server, url = start_moto()
    try:
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_url(_cloud_env: None) -> Iterator[str]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    server, url = start_gcs_emulator()
    try:
        client = gcs.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
        client.create_bucket(GCS_BUCKET)
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _s3_proxy(moto_url: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_url)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def _gcs_proxy(gcs_url: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(gcs_url)
    yield proxy
    proxy.stop()


@pytest.fixture
def s3_proxy(_s3_proxy: FaultProxy) -> Iterator[FaultProxy]:
    _s3_proxy.reset()
    yield _s3_proxy
    _s3_proxy.reset()


@pytest.fixture
def gcs_proxy(_gcs_proxy: FaultProxy) -> Iterator[FaultProxy]:
    _gcs_proxy.reset()
    yield _gcs_proxy
    _gcs_proxy.reset()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def local_store(tmp_path: Path) -> AsyncIterator[Storage]:
    st = open_storage(f"file://{tmp_path}/store", retry_delays=FAST_RETRIES)
    # The task API mounts the same app at /files; here it is served on its own.
    server = ThreadedUvicorn(_mount_files(st))
    st.public_base_url = server.url
    yield st
    server.stop()
    await st.aclose()


def _mount_files(st: Storage):  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.routing import Mount

    return Starlette(routes=[Mount("/files", app=create_files_app(st))])  # type: ignore[arg-type]


@pytest.fixture
async def s3_store(moto_url: str, prefix: str) -> AsyncIterator[Storage]:
    st = open_storage(f"s3://{S3_BUCKET}/{prefix}?endpoint_url={moto_url}", retry_delays=FAST_RETRIES)
    yield st
    await st.aclose()


@pytest.fixture
async def s3_faulty(s3_proxy: FaultProxy, prefix: str) -> AsyncIterator[Storage]:
    st = open_storage(f"s3://{S3_BUCKET}/{prefix}?endpoint_url={s3_proxy.url}", retry_delays=FAST_RETRIES)
    yield st
    await st.aclose()


@pytest.fixture
async def r2_store(s3_proxy: FaultProxy, prefix: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Storage]:
    """S3 reached the R2 way: an account endpoint under r2.cloudflarestorage.com. The made-up
    host is reached through the proxy acting as an HTTP proxy, which hands requests to moto."""
    monkeypatch.setenv("HTTP_PROXY", s3_proxy.url)
    monkeypatch.setenv("NO_PROXY", "")
    st = open_storage(f"s3://{S3_BUCKET}/{prefix}?endpoint_url={R2_ENDPOINT}", retry_delays=FAST_RETRIES)
    yield st
    await st.aclose()


@pytest.fixture
async def gcs_store(gcs_url: str, prefix: str) -> AsyncIterator[Storage]:
    st = open_storage(f"gs://{GCS_BUCKET}/{prefix}?endpoint_url={gcs_url}", retry_delays=FAST_RETRIES)
    yield st
    await st.aclose()


@pytest.fixture
async def gcs_faulty(gcs_proxy: FaultProxy, prefix: str) -> AsyncIterator[Storage]:
    st = open_storage(f"gs://{GCS_BUCKET}/{prefix}?endpoint_url={gcs_proxy.url}", retry_delays=FAST_RETRIES)
    yield st
    await st.aclose()


@pytest.fixture(params=["local", "s3", "r2", "gcs"])
def store(request: pytest.FixtureRequest) -> Storage:
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 200 MB file of random bytes and its sha256, written without holding it in memory."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    digest = hashlib.sha256()
    block = os.urandom(4 * MiB)
    with open(path, "wb") as fh:
        for i in range(BIG_SIZE // len(block)):
            # Vary each block so a misplaced part cannot go unnoticed.
            chunk = i.to_bytes(8, "big") + block[8:]
            fh.write(chunk)
            digest.update(chunk)
        tail = b"tail-not-aligned" * 7
        fh.write(tail)
        digest.update(tail)
    return path, digest.hexdigest()
