"""200 MB through each backend: the bytes come back intact, and the Python heap never holds
more than a bounded number of parts (measured with tracemalloc, which counts every thread)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from storage_testkit import MiB, sha256_of

HEAP_LIMIT = 100 * MiB


@pytest.fixture(params=["local", "s3", "gcs"])
def big_store(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return request.getfixturevalue(f"{request.param}_store")


@pytest.mark.slow
async def test_200mb_file_round_trip_in_bounded_memory(
    big_store, big_file: tuple[Path, str], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    store = big_store
    source, digest = big_file
    size = source.stat().st_size
    key = store.output_key("face_swap", "tsk_big", "video.mp4")
    dest = tmp_path / "back.mp4"

    tracemalloc.start()
    try:
        obj = await store.put_file(key, source)
        written = await store.download_to(key, dest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (obj.size, written, obj.content_type) == (size, size, "video/mp4")
    assert (await store.head(key)).size == size
    assert sha256_of(dest) == digest
    assert peak < HEAP_LIMIT, f"peak Python heap {peak / MiB:.0f} MiB"


@pytest.mark.slow
async def test_200mb_stream_in_and_out_s3(s3_store, big_file: tuple[Path, str]) -> None:  # type: ignore[no-untyped-def]
    """put_stream and stream(): parts are cut from a one-pass stream and read back in pieces."""
    import hashlib

    source, digest = big_file

    async def read_in_odd_pieces():  # type: ignore[no-untyped-def]
        with open(source, "rb") as fh:
            while chunk := fh.read(3 * MiB + 17):
                yield chunk

    key = s3_store.output_key("w", "t", "streamed.bin")
    tracemalloc.start()
    try:
        obj = await s3_store.put_stream(key, read_in_odd_pieces())
        check = hashlib.sha256()
        async for chunk in s3_store.stream(key, chunk_size=MiB):
            check.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert obj.size == source.stat().st_size
    assert check.hexdigest() == digest
    assert peak < HEAP_LIMIT, f"peak Python heap {peak / MiB:.0f} MiB"
