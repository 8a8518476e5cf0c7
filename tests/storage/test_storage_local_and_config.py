"""The local backend's own guarantees (atomic writes, no escape from the root, serving over
HTTP) and the parts that need no server: URL parsing, provider detection, URL-to-key mapping,
key rules and the retry schedule."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from storage import StorageError, open_storage
from storage.errors import StorageError as StorageErrorDirect
from storage.local import LocalStorage
from storage.retry import RetryPolicy
from taskfleet.errors import TaskfleetError

# ---- local backend ----


async def test_failed_stream_leaves_the_old_object_and_no_temp_file(local_store: LocalStorage) -> None:
    key = local_store.output_key("w", "t", "out.bin")
    await local_store.put_bytes(key, b"old")

    async def broken():  # type: ignore[no-untyped-def]
        yield b"new" * 1000
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        await local_store.put_stream(key, broken())
    assert await local_store.get_bytes(key) == b"old"
    assert sorted(p.name for p in local_store.local_path(key).parent.iterdir()) == ["out.bin"]


async def test_local_path_refuses_escapes(local_store: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, local_store.root / "link")
    for key in ("link/secret", "../outside/secret", "/etc/passwd"):
        with pytest.raises(StorageError) as info:
            local_store.local_path(key)
        assert info.value.code == "invalid_key"
    with pytest.raises(StorageError):
        await local_store.get_bytes("link/secret")
    assert local_store.key_for_url((outside / "secret").as_uri()) is None
    assert local_store.key_for_url((local_store.root / "link" / "secret").as_uri()) is None
    assert local_store.key_for_url(f"file://{local_store.root}/../outside/secret") is None


async def test_put_files_refuses_a_folder_that_leads_outside_and_replaces_a_last_name_link(
    local_store: LocalStorage, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, local_store.root / "link")
    with pytest.raises(StorageError) as info:
        await local_store.put_files([("w/t/ok.bin", b"fine", None), ("link/new.bin", b"escape", None)])
    assert info.value.code == "invalid_key"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not (local_store.root / "w").exists()  # refused before anything was written
    # Only the folder is resolved: a link as the last name is replaced by the rename, not written through.
    folder = local_store.root / "w" / "t"
    folder.mkdir(parents=True)
    os.symlink(outside / "secret", folder / "out.srt")
    await local_store.put_files([("w/t/out.srt", b"1\n", None)])
    assert (outside / "secret").read_text() == "s"
    assert not (folder / "out.srt").is_symlink() and (folder / "out.srt").read_bytes() == b"1\n"


async def test_served_files_support_ranges_and_404s(local_store: LocalStorage) -> None:
    data = bytes(range(256)) * 4096
    obj = await local_store.put_bytes(local_store.output_key("w", "t", "v.mp4"), data)
    assert obj.url == f"{local_store.public_base_url}/files/{obj.key}"
    async with httpx.AsyncClient() as client:
        part = await client.get(obj.url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == data[100:200]
        missing = await client.get(f"{local_store.public_base_url}/files/nope/x.png")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


async def test_local_url_without_base_is_file_url(tmp_path: Path) -> None:
    st = open_storage(f"file://{tmp_path}")
    obj = await st.put_bytes("a/b.txt", b"x")
    assert obj.url == obj.storage_url == (tmp_path / "a" / "b.txt").as_uri()
    assert st.key_for_url(obj.url) == "a/b.txt"
    assert Path(st.local_path("a/b.txt")).read_bytes() == b"x"  # type: ignore[attr-defined]
    await st.aclose()


async def test_put_file_copies_atomically(local_store: LocalStorage, tmp_path: Path) -> None:
    src = tmp_path / "src.gif"
    src.write_bytes(b"GIF89a" + os.urandom(10_000))
    obj = await local_store.put_file(local_store.output_key("w", "t", "a.gif"), src)
    assert (obj.size, obj.content_type) == (10_006, "image/gif")
    assert local_store.local_path(obj.key).read_bytes() == src.read_bytes()
    assert [p.name for p in local_store.local_path(obj.key).parent.iterdir()] == ["a.gif"]


async def test_put_files_renames_none_until_all_are_written(local_store: LocalStorage, tmp_path: Path) -> None:
    first, second = tmp_path / "a.wav", tmp_path / "b.srt"
    first.write_bytes(b"RIFF" + bytes(100))
    second.write_bytes(b"1\n")
    keys = [local_store.output_key("tts", "t", "a.wav"), local_store.output_key("tts", "t", "sub/b.srt")]
    folder = local_store.local_path(keys[0]).parent
    folder.mkdir(parents=True)
    (folder / "sub").write_bytes(b"a file where the second one's folder should be")
    with pytest.raises(StorageError):
        await local_store.put_files([(keys[0], first, None), (keys[1], second, None)])
    # The first was copied before the second failed, yet it is not in place, and no temp file is left.
    assert sorted(p.name for p in folder.iterdir()) == ["sub"]


async def test_put_files_syncs_after_every_copy(local_store: LocalStorage, tmp_path: Path, monkeypatch) -> None:
    # The order is the point: one journal commit then carries every file's data (see
    # storage.local._copy_all_atomically), instead of one commit per file.
    import shutil

    import storage.local as local_module

    calls = []
    copy, fsync = shutil.copyfile, os.fsync
    monkeypatch.setattr(local_module.shutil, "copyfile", lambda s, d: (calls.append("copy"), copy(s, d))[1])
    monkeypatch.setattr(local_module.os, "fsync", lambda fd: (calls.append("fsync"), fsync(fd))[1])
    sources = []
    for name in ("a.wav", "b.srt", "c.png"):
        (tmp_path / name).write_bytes(name.encode())
        sources.append(tmp_path / name)
    objs = await local_store.put_files([(local_store.output_key("w", "t", p.name), p, None) for p in sources])
    assert calls == ["copy"] * 3 + ["fsync"] * 3
    assert [local_store.local_path(o.key).read_bytes() for o in objs] == [b"a.wav", b"b.srt", b"c.png"]


# ---- open_storage and URLs ----


def test_open_storage_parses_each_scheme(tmp_path: Path) -> None:
    local = open_storage(f"file://{tmp_path}/s", public_base_url="http://api:8000/")
    assert (local.provider, local.prefix, local.public_base_url) == ("local", "", "http://api:8000")
    assert local.output_key("face_swap", "tsk_1", "out.jpg") == "face_swap/tsk_1/out.jpg"

    s3 = open_storage("s3://bkt/some/prefix/?region=eu-west-1&part_size_mb=16&concurrency=2", url_expiry_s=60)
    assert (s3.provider, s3.prefix, s3.part_size, s3.concurrency, s3.url_expiry_s) == ("s3", "some/prefix", 16 << 20, 2, 60)
    assert s3.output_key("tts", "tsk_2", "a.wav") == "some/prefix/tts/tsk_2/a.wav"

    r2 = open_storage("s3://bkt/p?endpoint_url=https://abc123.r2.cloudflarestorage.com")
    assert r2.provider == "r2"
    assert r2.region == "auto"  # type: ignore[attr-defined]
    minio = open_storage("s3://bkt/p?endpoint_url=http://minio.internal:9000")
    assert minio.provider == "s3"
    lookalike = open_storage("s3://bkt/p?endpoint_url=https://r2.cloudflarestorage.com.evil.example")
    assert lookalike.provider == "s3"

    gcs = open_storage("gs://gbkt/out?endpoint_url=http://127.0.0.1:1&public_base_url=https://cdn.example/x")
    assert (gcs.provider, gcs.prefix, gcs.public_base_url) == ("gcs", "out", "https://cdn.example/x")


@pytest.mark.parametrize(
    "url",
    ["ftp://x/y", "s3://", "gs:///prefix", "file://host/path", "s3://b/p?endpoint=x", "s3://b/p?part_size_mb=abc", "s3://b?concurrency=0"],
)
def test_open_storage_refuses_bad_urls(url: str) -> None:
    with pytest.raises(StorageError) as info:
        open_storage(url)
    assert info.value.code == "invalid_storage_config"


async def test_public_base_url_argument_is_for_local_stores_only(tmp_path: Path) -> None:
    # The API and consumers pass their own base URL whatever the backend: a cloud store must
    # keep signing its URLs rather than point them at the API.
    s3 = open_storage("s3://bkt/p", public_base_url="http://api:8000")
    assert s3.public_base_url is None
    assert "X-Amz-Signature=" in await s3.url_for("p/a.png")
    gcs = open_storage("gs://gb/p", public_base_url="http://api:8000", credentials=_anonymous())
    assert gcs.public_base_url is None
    cdn = open_storage("s3://bkt/p?public_base_url=https://cdn.example", public_base_url="http://api")
    assert cdn.public_base_url == "https://cdn.example"
    assert await cdn.url_for("p/a.png") == "https://cdn.example/p/a.png"
    local = open_storage(f"file://{tmp_path}?public_base_url=http://other", public_base_url="http://api")
    assert local.public_base_url == "http://other"


async def test_s3_urls_map_back_to_keys() -> None:
    aws = open_storage("s3://bkt/out?region=eu-west-1")
    assert aws.key_for_url("s3://bkt/out/a/b.png") == "out/a/b.png"
    assert aws.key_for_url("s3://bkt/elsewhere/b.png") is None  # outside our prefix
    assert aws.key_for_url("https://bkt.s3.eu-west-1.amazonaws.com/out/a%20b.png?X-Amz-Signature=1") == "out/a b.png"
    assert aws.key_for_url("https://s3.eu-west-1.amazonaws.com/bkt/out/x.png") == "out/x.png"
    assert aws.key_for_url("https://other.s3.amazonaws.com/out/x.png") is None
    presigned = await aws.url_for("out/x y.png")
    assert "X-Amz-Signature=" in presigned and "X-Amz-Expires=3600" in presigned
    assert aws.key_for_url(presigned) == "out/x y.png"

    r2 = open_storage("s3://bkt/out?endpoint_url=https://acct.r2.cloudflarestorage.com&public_base_url=https://pub.example")
    assert await r2.url_for("out/k.png") == "https://pub.example/out/k.png"
    assert r2.key_for_url("https://pub.example/out/k.png") == "out/k.png"
    assert r2.key_for_url("https://acct.r2.cloudflarestorage.com/bkt/out/k.png?X-Amz-Date=1") == "out/k.png"
    assert r2.key_for_url("https://acct.r2.cloudflarestorage.com/other/out/k.png") is None


def test_gcs_urls_map_back_to_keys() -> None:
    gcs = open_storage("gs://gb/out", credentials=_anonymous())
    assert gcs.key_for_url("gs://gb/out/a.png") == "out/a.png"
    assert gcs.key_for_url("gs://gb/other/a.png") is None
    assert gcs.key_for_url("https://storage.googleapis.com/gb/out/a.png?X-Goog-Signature=x") == "out/a.png"
    assert gcs.key_for_url("https://gb.storage.googleapis.com/out/a.png") == "out/a.png"
    assert gcs.key_for_url("https://storage.googleapis.com/download/storage/v1/b/gb/o/out%2Fa.png?alt=media") == "out/a.png"
    assert gcs.key_for_url("https://storage.googleapis.com/other/out/a.png") is None


def _anonymous():  # type: ignore[no-untyped-def]
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


# ---- errors and retries ----


def test_storage_error_shape() -> None:
    err = StorageErrorDirect("gone", code="not_found", key="a/b")
    assert isinstance(err, TaskfleetError)
    assert (err.status, err.retryable) == (404, False)
    assert err.to_body() == {"error": {"code": "not_found", "message": "gone", "details": {"key": "a/b"}}}
    assert StorageErrorDirect("x", code="unavailable").retryable is True
    assert StorageErrorDirect("x", code="throttled").retryable is True
    assert StorageErrorDirect("x", code="access_denied").retryable is False


async def test_default_retry_schedule_is_1_2_4_seconds() -> None:
    assert open_storage("s3://bkt/p").retry.delays == (1.0, 2.0, 4.0)
    assert open_storage("s3://bkt/p", retry_delays=[0.5]).retry.delays == (0.5,)
    sleeps: list[float] = []
    retrying = RetryPolicy().async_retrying()

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    retrying.sleep = fake_sleep  # type: ignore[method-assign]
    calls = 0
    with pytest.raises(StorageError):
        async for attempt in retrying:
            with attempt:
                calls += 1
                raise StorageError("down", code="unavailable")
    assert calls == 4
    assert sleeps == [1.0, 2.0, 4.0]


async def test_non_retryable_errors_are_not_retried() -> None:
    calls = 0
    with pytest.raises(StorageError):
        async for attempt in RetryPolicy((0.0, 0.0)).async_retrying():
            with attempt:
                calls += 1
                raise StorageError("no", code="access_denied")
    assert calls == 1
