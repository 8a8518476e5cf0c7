"""Faults injected by a real HTTP proxy between a backend and its server: 5xx answers are
retried on the configured schedule and then surfaced with the right code; one failed multipart
part or resumable chunk costs one retry of that part; a connection cut mid-download resumes at
the byte reached, pinned to the same version of the object."""

from __future__ import annotations

import os

import pytest

from storage import Storage, StorageError
from storage_testkit import FAST_RETRIES, MiB, FaultProxy

ATTEMPTS = len(FAST_RETRIES) + 1


def _data(size: int) -> bytes:
    block = os.urandom(MiB)
    return b"".join(i.to_bytes(4, "big") + block[4:] for i in range(size // MiB)) + block[: size % MiB]


# ---- S3 (moto) ----


async def test_s3_5xx_retried_then_succeeds(s3_faulty: Storage, s3_proxy: FaultProxy) -> None:
    key = s3_faulty.output_key("w", "t", "a.txt")
    s3_proxy.fail("PUT", status=503, times=2)
    obj = await s3_faulty.put_bytes(key, b"payload")
    assert obj.size == 7
    assert len(s3_proxy.requests("PUT")) == 3
    s3_proxy.fail("GET", status=500, times=3)
    assert await s3_faulty.get_bytes(key) == b"payload"


@pytest.mark.parametrize(("status", "code"), [(503, "unavailable"), (500, "unavailable"), (429, "throttled")])
async def test_s3_persistent_5xx_surfaces_retryable_code(
    s3_faulty: Storage, s3_proxy: FaultProxy, status: int, code: str
) -> None:
    key = s3_faulty.output_key("w", "t", "a.txt")
    s3_proxy.fail("PUT", status=status, times=100)
    with pytest.raises(StorageError) as info:
        await s3_faulty.put_bytes(key, b"payload")
    assert (info.value.code, info.value.retryable) == (code, True)
    assert len(s3_proxy.requests("PUT")) == ATTEMPTS


async def test_s3_access_denied_is_not_retried(s3_faulty: Storage, s3_proxy: FaultProxy) -> None:
    s3_proxy.fail("PUT", status=403, times=100)
    with pytest.raises(StorageError) as info:
        await s3_faulty.put_bytes(s3_faulty.output_key("w", "t", "a.txt"), b"x")
    assert (info.value.code, info.value.retryable) == ("access_denied", False)
    assert len(s3_proxy.requests("PUT")) == 1


async def test_s3_failed_part_is_retried_alone(s3_faulty: Storage, s3_proxy: FaultProxy) -> None:
    data = _data(2 * s3_faulty.part_size + 3 * MiB)  # three parts
    key = s3_faulty.output_key("w", "t", "v.mp4")
    s3_proxy.fail("PUT", query=r"partNumber=2$", status=503, times=2)
    obj = await s3_faulty.put_bytes(key, data)
    assert obj.size == len(data)
    assert len(s3_proxy.requests("PUT", query=r"partNumber=1$")) == 1
    assert len(s3_proxy.requests("PUT", query=r"partNumber=2$")) == 3
    assert len(s3_proxy.requests("PUT", query=r"partNumber=3$")) == 1
    assert await s3_faulty.get_bytes(key) == data


async def test_s3_failed_upload_is_aborted(s3_faulty: Storage, s3_proxy: FaultProxy, moto_url: str) -> None:
    import boto3

    data = _data(s3_faulty.part_size + MiB)
    key = s3_faulty.output_key("w", "t", "v.mp4")
    s3_proxy.fail("PUT", query=r"partNumber=2$", status=503, times=100)
    with pytest.raises(StorageError) as info:
        await s3_faulty.put_bytes(key, data)
    assert info.value.code == "unavailable"
    assert len(s3_proxy.requests("DELETE", query="uploadId=")) == 1
    assert not await s3_faulty.exists(key)
    client = boto3.client("s3", endpoint_url=moto_url)
    uploads = client.list_multipart_uploads(Bucket="taskfleet-test", Prefix=key).get("Uploads", [])
    assert uploads == []


async def test_s3_completion_whose_reply_is_lost_counts_as_done(s3_faulty: Storage, s3_proxy: FaultProxy) -> None:
    # The server completes the upload but the client is told 503; the retried completion finds
    # no upload (as S3 may answer once an upload is done), and the object there in full settles it.
    data = _data(s3_faulty.part_size + MiB)
    key = s3_faulty.output_key("w", "t", "v.mp4")
    s3_proxy.fail("POST", query=r"^uploadId=", status=503, after_upstream=True, times=1)
    s3_proxy.fail("POST", query=r"^uploadId=", status=404, times=1)
    obj = await s3_faulty.put_bytes(key, data)
    assert obj.size == len(data)
    assert len(s3_proxy.requests("POST", query=r"^uploadId=")) == 2
    assert len(s3_proxy.requests("HEAD")) == 1
    assert await s3_faulty.get_bytes(key) == data


async def test_s3_download_resumes_after_connection_cut(s3_faulty: Storage, s3_proxy: FaultProxy) -> None:
    data = _data(3 * MiB)
    key = s3_faulty.output_key("w", "t", "d.bin")
    await s3_faulty.put_bytes(key, data)
    s3_proxy.reset()
    s3_proxy.fail("GET", status=None, cut_after=MiB + 12345, times=1)
    got = b"".join([chunk async for chunk in s3_faulty.stream(key, chunk_size=64 * 1024)])
    assert got == data
    gets = s3_proxy.requests("GET")
    assert len(gets) == 2
    resumed_at = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= MiB + 12345
    assert gets[1].headers["if-match"] == gets[0].headers["if-match"]


async def test_s3_object_replaced_mid_download_is_reported(s3_faulty: Storage, s3_proxy: FaultProxy) -> None:
    key = s3_faulty.output_key("w", "t", "d.bin")
    await s3_faulty.put_bytes(key, _data(2 * MiB))
    s3_proxy.fail("GET", status=None, cut_after=MiB, times=1)
    stream = s3_faulty.stream(key, chunk_size=64 * 1024)
    first = await anext(stream)
    assert first
    await s3_faulty.put_bytes(key, b"a different object")
    with pytest.raises(StorageError) as info:
        async for _ in stream:
            pass
    assert info.value.code == "object_changed"


# ---- GCS (emulator) ----


async def test_gcs_small_upload_5xx_retried(gcs_faulty: Storage, gcs_proxy: FaultProxy) -> None:
    key = gcs_faulty.output_key("w", "t", "a.json")
    gcs_proxy.fail("POST", path="/upload/", status=503, times=2)
    obj = await gcs_faulty.put_bytes(key, b"{}")
    assert obj.content_type == "application/json"
    assert len(gcs_proxy.requests("POST", path="/upload/")) == 3
    gcs_proxy.fail("GET", path="/download/", status=502, times=1)
    assert await gcs_faulty.get_bytes(key) == b"{}"


@pytest.mark.parametrize(("status", "code"), [(503, "unavailable"), (429, "throttled")])
async def test_gcs_persistent_errors_surface(gcs_faulty: Storage, gcs_proxy: FaultProxy, status: int, code: str) -> None:
    gcs_proxy.fail("POST", path="/upload/", status=status, times=100)
    with pytest.raises(StorageError) as info:
        await gcs_faulty.put_bytes(gcs_faulty.output_key("w", "t", "a.json"), b"{}")
    assert (info.value.code, info.value.retryable) == (code, True)
    assert len(gcs_proxy.requests("POST", path="/upload/")) == ATTEMPTS


async def test_gcs_forbidden_not_retried(gcs_faulty: Storage, gcs_proxy: FaultProxy) -> None:
    gcs_proxy.fail("GET", path="/o/", status=403, times=100)
    with pytest.raises(StorageError) as info:
        await gcs_faulty.get_bytes(gcs_faulty.output_key("w", "t", "a.json"))
    assert (info.value.code, info.value.retryable) == ("access_denied", False)
    assert len(gcs_proxy.requests("GET", path="/o/")) == 1


@pytest.mark.parametrize("failing_chunk", [0, 1, 2])
async def test_gcs_failed_chunk_resumes_the_session(
    gcs_faulty: Storage, gcs_proxy: FaultProxy, failing_chunk: int
) -> None:
    data = _data(2 * gcs_faulty.part_size + 5 * MiB)  # three resumable chunks
    key = gcs_faulty.output_key("w", "t", "v.mp4")
    gcs_proxy.fail("PUT", path="/upload/", query="upload_id=", status=503, times=1, skip=failing_chunk)
    obj = await gcs_faulty.put_bytes(key, data)
    assert obj.size == len(data)
    puts = gcs_proxy.requests("PUT", path="/upload/")
    ranges = [p.headers.get("content-range") for p in puts]
    # the three chunks, the failed try, and one status query before the retry
    assert len(puts) == 5, ranges
    assert sum(1 for r in ranges if r and r.startswith("bytes */")) == 1
    assert len(gcs_proxy.requests("POST", path="/upload/")) == 1  # one session, not restarted
    assert await gcs_faulty.get_bytes(key) == data


async def test_gcs_failed_upload_surfaces_unavailable(gcs_faulty: Storage, gcs_proxy: FaultProxy) -> None:
    data = _data(gcs_faulty.part_size + MiB)
    key = gcs_faulty.output_key("w", "t", "v.mp4")
    gcs_proxy.fail("PUT", path="/upload/", query="upload_id=", status=503, times=100, skip=1)
    with pytest.raises(StorageError) as info:
        await gcs_faulty.put_bytes(key, data)
    assert info.value.code == "unavailable"
    assert not await gcs_faulty.exists(key)


async def test_gcs_download_resumes_after_connection_cut(gcs_faulty: Storage, gcs_proxy: FaultProxy) -> None:
    data = _data(3 * MiB)
    key = gcs_faulty.output_key("w", "t", "d.bin")
    await gcs_faulty.put_bytes(key, data)
    gcs_proxy.reset()
    gcs_proxy.fail("GET", path="/download/", status=None, cut_after=2 * MiB + 7, times=1)
    got = b"".join([chunk async for chunk in gcs_faulty.stream(key, chunk_size=64 * 1024)])
    assert got == data
    gets = gcs_proxy.requests("GET", path="/download/")
    assert len(gets) == 2
    assert gets[1].headers["range"].startswith("bytes=")
    assert "generation=" in gets[1].query  # pinned to the version first seen
