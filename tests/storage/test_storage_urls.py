"""Result URLs fetched over HTTP: S3 presigned and public-base URLs, GCS signed URLs (service
account credentials, tokens from a real local token endpoint) and the public fallback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest

from storage import open_storage
from storage_testkit import FAST_RETRIES, GCS_BUCKET, S3_BUCKET, ThreadedUvicorn

SA_EMAIL = "taskfleet-test@example-project.iam.gserviceaccount.com"


async def test_s3_presigned_url_has_configured_expiry(moto_url: str, prefix: str) -> None:
    st = open_storage(f"s3://{S3_BUCKET}/{prefix}?endpoint_url={moto_url}", url_expiry_s=120, retry_delays=FAST_RETRIES)
    obj = await st.put_bytes(st.output_key("w", "t", "a.webp"), b"RIFFxxxxWEBP")
    query = parse_qs(urlsplit(obj.url).query)
    assert query["X-Amz-Expires"] == ["120"]
    async with httpx.AsyncClient() as client:
        response = await client.get(obj.url)
    assert response.status_code == 200
    assert (response.content, response.headers["content-type"]) == (b"RIFFxxxxWEBP", "image/webp")
    await st.aclose()


async def test_s3_public_base_url(moto_url: str, prefix: str) -> None:
    # A bucket served publicly (or through a CDN) at a base URL: results get plain URLs.
    base = f"{moto_url}/{S3_BUCKET}"
    st = open_storage(f"s3://{S3_BUCKET}/{prefix}?endpoint_url={moto_url}&public_base_url={base}", retry_delays=FAST_RETRIES)
    obj = await st.put_bytes(st.output_key("w", "t", "a.txt"), b"public")
    assert obj.url == f"{base}/{prefix}/w/t/a.txt"
    # Making the bucket public is the operator's job; moto checks object ACLs, so grant one here.
    boto3.client("s3", endpoint_url=moto_url).put_object_acl(Bucket=S3_BUCKET, Key=obj.key, ACL="public-read")
    async with httpx.AsyncClient() as client:
        assert (await client.get(obj.url)).content == b"public"
    assert st.key_for_url(obj.url) == obj.key
    spaced = await st.url_for(f"{prefix}/a b.txt")
    assert spaced == f"{base}/{prefix}/a%20b.txt"
    assert st.key_for_url(spaced) == f"{prefix}/a b.txt"
    await st.aclose()


async def test_gcs_without_signing_credentials_gives_public_urls(gcs_store) -> None:  # type: ignore[no-untyped-def]
    obj = await gcs_store.put_bytes(gcs_store.output_key("w", "t", "p.png"), b"png")
    assert "X-Goog-Signature" not in obj.url
    assert obj.url.endswith(f"/{GCS_BUCKET}/{obj.key}")


@pytest.fixture
def token_server() -> Iterator[ThreadedUvicorn]:
    """Google's OAuth token endpoint, reduced to what a service account's refresh needs."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def token(request):  # type: ignore[no-untyped-def]
        form = (await request.body()).decode()
        assert "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in form
        return JSONResponse({"access_token": "test-access-token", "expires_in": 3600, "token_type": "Bearer"})

    server = ThreadedUvicorn(Starlette(routes=[Route("/token", token, methods=["POST"])]))
    yield server
    server.stop()


def _service_account_info(token_uri: str) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "example-project",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": SA_EMAIL,
        "client_id": "1",
        "token_uri": token_uri,
    }


async def test_gcs_signed_url_with_service_account(
    gcs_url: str, prefix: str, token_server: ThreadedUvicorn, tmp_path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    # Credentials found the standard way: GOOGLE_APPLICATION_CREDENTIALS names a key file.
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(_service_account_info(f"{token_server.url}/token")))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    st = open_storage(f"gs://{GCS_BUCKET}/{prefix}?endpoint_url={gcs_url}", url_expiry_s=900, retry_delays=FAST_RETRIES)
    obj = await st.put_bytes(st.output_key("w", "t", "s.mp4"), b"\x00\x00\x00\x18ftypmp42")
    parts = urlsplit(obj.url)
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}" == gcs_url
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["900"]
    assert query["X-Goog-Credential"][0].startswith(SA_EMAIL + "/")
    assert len(query["X-Goog-Signature"][0]) == 512  # hex of a 2048-bit RSA signature
    async with httpx.AsyncClient() as client:
        response = await client.get(obj.url)
    assert response.status_code == 200
    assert (response.content, response.headers["content-type"]) == (b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    assert st.key_for_url(obj.url) == obj.key
    await st.aclose()
