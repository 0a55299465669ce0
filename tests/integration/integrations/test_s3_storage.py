"""S3Storage's pre-signed URLs against the fake S3 over real HTTP: an upload then a download
go through; a changed, expired, mistyped or mis-sized request is refused as S3 refuses it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.integrations.fakes_storage import FakeS3
from app.integrations.storage import Credentials, PresignedRequest, S3Storage, record_key

KEY_ID, SECRET, BUCKET = "carebook-test", "carebook-test-secret-key", "records"
CONTENT = b"%PDF-1.7 pretend"
KEY = record_key(uuid.UUID(int=1), uuid.UUID(int=2))


@pytest.fixture
async def fake() -> AsyncIterator[FakeS3]:
    async with FakeS3(KEY_ID, SECRET, bucket=BUCKET) as server:
        yield server


@pytest.fixture
def storage(fake: FakeS3) -> S3Storage:
    return S3Storage(fake.url, BUCKET, Credentials(KEY_ID, SECRET, "us-east-1"))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def _upload(storage: S3Storage, size: int = len(CONTENT)) -> PresignedRequest:
    return storage.presign_upload(
        KEY, content_type="application/pdf", size_bytes=size, expires_in=900, base_url=""
    )


def _download(storage: S3Storage) -> PresignedRequest:
    return storage.presign_download(
        KEY,
        content_type="application/pdf",
        filename="Scan.pdf",
        actor_id=uuid.UUID(int=3),
        expires_in=900,
        base_url="",
    )


def _s3_code(response: httpx.Response) -> str:
    return response.text.split("<Code>")[1].split("</Code>")[0]


async def test_upload_then_download(
    fake: FakeS3, storage: S3Storage, http: httpx.AsyncClient
) -> None:
    upload = _upload(storage)
    assert upload.url.startswith(f"{fake.url}/{BUCKET}/{KEY}?")  # path-style
    assert upload.headers == {
        "Content-Type": "application/pdf",
        "Content-Length": "16",
        "If-None-Match": "*",
    }
    response = await http.put(upload.url, content=CONTENT, headers=upload.headers)
    assert response.status_code == 200, response.text
    assert fake.objects[KEY].content == CONTENT

    download = await http.get(_download(storage).url)
    assert download.status_code == 200, download.text
    assert download.content == CONTENT
    assert download.headers["content-type"] == "application/pdf"
    assert download.headers["content-disposition"].startswith('attachment; filename="Scan.pdf"')
    (put, get) = fake.calls
    assert "X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost" in put.query
    assert "X-Amz-SignedHeaders=host" in get.query


async def test_a_changed_url_does_not_match(storage: S3Storage, http: httpx.AsyncClient) -> None:
    upload = _upload(storage)
    assert (await http.put(upload.url, content=CONTENT, headers=upload.headers)).is_success
    url = _download(storage).url
    for tampered in (
        url.replace("Scan.pdf", "Scan.html"),
        url.replace("X-Amz-Expires=900", "X-Amz-Expires=901"),
        url.replace(KEY, record_key(uuid.UUID(int=1), uuid.UUID(int=9))),
    ):
        response = await http.get(tampered)
        assert response.status_code == 403
        assert _s3_code(response) == "SignatureDoesNotMatch"


async def test_the_upload_must_match_the_signed_type_and_size(
    storage: S3Storage, http: httpx.AsyncClient
) -> None:
    upload = _upload(storage)
    wrong_type = await http.put(
        upload.url, content=CONTENT, headers={**upload.headers, "Content-Type": "text/html"}
    )
    assert (wrong_type.status_code, _s3_code(wrong_type)) == (403, "SignatureDoesNotMatch")
    # httpx sends the real Content-Length, as a browser's fetch does: a bigger body mismatches.
    bigger = await http.put(
        upload.url, content=CONTENT + b"!", headers={"Content-Type": "application/pdf"}
    )
    assert (bigger.status_code, _s3_code(bigger)) == (403, "SignatureDoesNotMatch")


async def test_an_expired_url_is_refused(fake: FakeS3, http: httpx.AsyncClient) -> None:
    past = S3Storage(
        fake.url,
        BUCKET,
        Credentials(KEY_ID, SECRET, "us-east-1"),
        clock=lambda: datetime.now(UTC) - timedelta(seconds=901),
    )
    upload = _upload(past)
    response = await http.put(upload.url, content=CONTENT, headers=upload.headers)
    assert (response.status_code, _s3_code(response)) == (403, "AccessDenied")


async def test_another_secret_is_refused(fake: FakeS3, http: httpx.AsyncClient) -> None:
    forged = S3Storage(fake.url, BUCKET, Credentials(KEY_ID, "guessed", "us-east-1"))
    upload = _upload(forged)
    response = await http.put(upload.url, content=CONTENT, headers=upload.headers)
    assert (response.status_code, _s3_code(response)) == (403, "SignatureDoesNotMatch")
    assert not fake.objects


async def test_a_missing_object_is_no_such_key(storage: S3Storage, http: httpx.AsyncClient) -> None:
    response = await http.get(_download(storage).url)
    assert (response.status_code, _s3_code(response)) == (404, "NoSuchKey")
