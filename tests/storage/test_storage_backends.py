"""The storage interface, run against every backend over real HTTP: local (served by uvicorn),
S3 (moto server), S3 reached the R2 way (an r2.cloudflarestorage.com endpoint), GCS (emulator)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from storage import Storage, StorageError, StoredObject
from storage_testkit import MiB, sha256_of

EXPECTED_PROVIDER = {"LocalStorage": "local", "GCSStorage": "gcs"}


async def fetch(url: str) -> httpx.Response:
    # trust_env: the R2 case reaches its made-up host through HTTP_PROXY, like boto3 does.
    async with httpx.AsyncClient(trust_env=True, timeout=60) as client:
        return await client.get(url)


def test_provider_names(store: Storage) -> None:
    name = type(store).__name__
    if name == "S3Storage":
        expected = "r2" if "r2.cloudflarestorage.com" in (store.endpoint_url or "") else "s3"  # type: ignore[attr-defined]
    else:
        expected = EXPECTED_PROVIDER[name]
    assert store.provider == expected


async def test_bytes_round_trip_and_url_serves_them(store: Storage) -> None:
    key = store.output_key("face_swap", "tsk_1", "result.png")
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10
    obj = await store.put_bytes(key, data)

    assert isinstance(obj, StoredObject)
    assert (obj.key, obj.size, obj.content_type) == (key, len(data), "image/png")
    assert store.key_for_url(obj.storage_url) == key
    assert await store.get_bytes(key) == data
    assert await store.exists(key)

    response = await fetch(obj.url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"
    assert store.key_for_url(obj.url) == key


async def test_output_key_layout(store: Storage) -> None:
    key = store.output_key("tts", "tsk_9", "speech.wav")
    assert key.endswith("tts/tsk_9/speech.wav")
    if store.prefix:
        assert key == f"{store.prefix}/tts/tsk_9/speech.wav"


async def test_explicit_content_type_is_kept(store: Storage) -> None:
    key = store.output_key("echo", "t", "payload")
    obj = await store.put_bytes(key, b'{"a": 1}', content_type="application/json")
    assert obj.content_type == "application/json"
    if store.provider != "local":  # the local store derives types from names (see storage.local)
        head = await store.head(key)
        assert head.content_type == "application/json"
        assert (await fetch(obj.url)).headers["content-type"] == "application/json"


async def test_guessed_content_types(store: Storage) -> None:
    for name, expected in [("v.mp4", "video/mp4"), ("a.webp", "image/webp"), ("x.gif", "image/gif"), ("blob", "application/octet-stream")]:
        obj = await store.put_bytes(store.output_key("w", "t", name), b"x")
        assert obj.content_type == expected, name
        assert (await store.head(obj.key)).content_type == expected
        assert (await fetch(obj.url)).headers["content-type"] == expected


async def test_empty_object(store: Storage) -> None:
    key = store.output_key("w", "t", "empty.txt")
    obj = await store.put_bytes(key, b"")
    assert obj.size == 0
    assert await store.get_bytes(key) == b""
    assert [c async for c in store.stream(key)] == []


async def test_stream_in_and_out_across_part_boundaries(store: Storage, tmp_path: Path) -> None:
    # 3 parts and a bit for every backend's part size, fed in odd-sized pieces.
    size = 3 * store.part_size + 12345
    source = tmp_path / "src.bin"
    with open(source, "wb") as fh:
        for i in range(size // MiB + 1):
            fh.write(hashlib.sha256(str(i).encode()).digest() * (MiB // 32))
        fh.truncate(size)

    async def pieces():  # type: ignore[no-untyped-def]
        with open(source, "rb") as fh:
            while chunk := fh.read(777_777):
                yield chunk

    key = store.output_key("w", "t", "streamed.mp4")
    obj = await store.put_stream(key, pieces())
    assert obj.size == size
    assert obj.content_type == "video/mp4"

    digest = hashlib.sha256()
    total = 0
    async for chunk in store.stream(key, chunk_size=256 * 1024):
        assert 0 < len(chunk) <= 256 * 1024
        digest.update(chunk)
        total += len(chunk)
    assert total == size
    assert digest.hexdigest() == sha256_of(source)


async def test_file_round_trip_and_download_to(store: Storage, tmp_path: Path) -> None:
    source = tmp_path / "in.wav"
    source.write_bytes(b"RIFF" + bytes(1000))
    key = store.output_key("tts", "t", "out.wav")
    obj = await store.put_file(key, source)
    assert (obj.size, obj.content_type) == (1004, "audio/wav")
    dest = tmp_path / "deep" / "dir" / "copy.wav"
    assert await store.download_to(key, dest) == 1004
    assert dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["copy.wav"]  # no temp files left


async def test_put_files_stores_each_in_order(store: Storage, tmp_path: Path) -> None:
    # The second is given as bytes: a processor stores what it holds in memory (an SRT) beside files.
    sources = []
    for i, name in enumerate(("speech.wav", "speech.srt", "image_0.png")):
        path = tmp_path / name
        path.write_bytes(bytes([i]) * (1000 + i))
        sources.append(path)
    keys = [store.output_key("tts", "t", p.name) for p in sources]
    objs = await store.put_files([(keys[0], sources[0], None), (keys[1], sources[1].read_bytes(), "application/x-subrip"),
                                  (keys[2], sources[2], None)])
    assert [(o.key, o.size, o.content_type) for o in objs] == [
        (keys[0], 1000, "audio/wav"), (keys[1], 1001, "application/x-subrip"), (keys[2], 1002, "image/png"),
    ]
    for obj, source in zip(objs, sources):
        assert await store.get_bytes(obj.key) == source.read_bytes()
        assert (await fetch(obj.url)).content == source.read_bytes()


async def test_put_files_with_a_missing_source_raises_it(store: Storage, tmp_path: Path) -> None:
    there = tmp_path / "there.bin"
    there.write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        await store.put_files([(store.output_key("w", "t", "a.bin"), there, None),
                               (store.output_key("w", "t", "b.bin"), tmp_path / "missing.bin", None)])


async def test_overwrite_replaces(store: Storage) -> None:
    key = store.output_key("w", "t", "o.txt")
    await store.put_bytes(key, b"first version")
    await store.put_bytes(key, b"second")
    assert await store.get_bytes(key) == b"second"


async def test_missing_keys(store: Storage, tmp_path: Path) -> None:
    key = store.output_key("w", "t", "missing.bin")
    assert not await store.exists(key)
    for call in (store.get_bytes(key), store.head(key), store.download_to(key, tmp_path / "x")):
        with pytest.raises(StorageError) as info:
            await call
        assert info.value.code == "not_found"
        assert info.value.retryable is False
    with pytest.raises(StorageError) as info:
        async for _ in store.stream(key):
            pass
    assert info.value.code == "not_found"
    assert not (tmp_path / "x").exists()


async def test_delete_is_idempotent(store: Storage) -> None:
    key = store.output_key("w", "t", "d.txt")
    await store.put_bytes(key, b"bye")
    await store.delete(key)
    assert not await store.exists(key)
    await store.delete(key)


async def test_invalid_keys_refused(store: Storage) -> None:
    for bad in ["", "/abs", "a/../b", "a//b", "./a", "a\\b", "a/\x00", "x/", "../../etc/passwd"]:
        for call in (store.put_bytes(bad, b"x"), store.get_bytes(bad), store.url_for(bad)):
            with pytest.raises(StorageError) as info:
                await call
            assert info.value.code == "invalid_key", bad


def test_foreign_urls_are_not_ours(store: Storage) -> None:
    assert store.key_for_url("https://example.com/a/b.png") is None
    assert store.key_for_url("s3://other-bucket/x/y") is None
    assert store.key_for_url("gs://other-bucket/x/y") is None
    assert store.key_for_url("file:///etc/passwd") is None


async def test_stream_abandoned_early_releases_the_connection(store: Storage) -> None:
    key = store.output_key("w", "t", "long.bin")
    await store.put_bytes(key, bytes(3 * MiB))
    for _ in range(store.concurrency + 6):  # more than the pool has connections and threads
        stream = store.stream(key, chunk_size=64 * 1024)
        assert len(await anext(stream)) == 64 * 1024
        await stream.aclose()
    assert len(await store.get_bytes(key)) == 3 * MiB


async def test_put_stream_accepts_plain_iterables(store: Storage) -> None:
    key = store.output_key("w", "t", "list.txt")
    obj = await store.put_stream(key, [b"a", bytearray(b"b"), memoryview(b"c"), b""])
    assert (obj.size, await store.get_bytes(key)) == (3, b"abc")
