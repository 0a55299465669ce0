"""With CAREBOOK_STORAGE_BACKEND=s3 the records API hands out S3 URLs (here, the fake S3's):
a client uploads and downloads straight to and from the object store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.integrations.fakes_storage import FakeS3
from app.integrations.storage import S3Storage, create_storage
from app.kit.db import Database
from app.settings import Settings
from tests.fixtures.app import client_for, make_settings, running_app
from tests.fixtures.problems import assert_problem
from tests.fixtures.records import RECORD, CareTeam, records_settings

KEY_ID, SECRET, BUCKET = "carebook-minio", "carebook-minio-secret", "carebook-records"


@pytest.fixture
async def fake_s3() -> AsyncIterator[FakeS3]:
    async with FakeS3(KEY_ID, SECRET, bucket=BUCKET) as server:
        yield server


@pytest.fixture
async def s3_app(
    settings: Settings, fake_s3: FakeS3, database: Database, tmp_path: Path
) -> AsyncIterator[FastAPI]:
    s3 = {
        "storage_backend": "s3",
        "s3_endpoint_url": fake_s3.url,
        "s3_bucket": BUCKET,
        "s3_access_key_id": KEY_ID,
        "s3_secret_access_key": SECRET,
    }
    async with running_app(records_settings(settings, tmp_path, **s3)) as app:
        yield app


async def test_records_round_trip_through_s3(
    s3_app: FastAPI, fake_s3: FakeS3, team: CareTeam
) -> None:
    async with client_for(s3_app) as api, httpx.AsyncClient(timeout=5) as outside:
        created = await api.post(team.records_path(), json=RECORD, headers=team.staff.headers)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["upload_url"].startswith(f"{fake_s3.url}/{BUCKET}/patients/")
        put = await outside.put(
            body["upload_url"], content=b"hello world", headers=body["upload_headers"]
        )
        assert put.status_code == 200, put.text
        again = await outside.put(
            body["upload_url"], content=b"HELLO WORLD", headers=body["upload_headers"]
        )
        assert again.status_code == 412, "the object is written once"

        listed = await api.get(team.records_path(), headers=team.patient.headers)
        (item,) = listed.json()["items"]
        download = await outside.get(item["download_url"])
        assert download.status_code == 200, download.text
        assert download.content == b"hello world"
        assert download.headers["content-type"] == "text/plain"

        # The app's own file routes are the local backend's only.
        local = item["download_url"].replace(f"{fake_s3.url}/{BUCKET}", "/v1/files")
        assert_problem(await api.get(local), 404, "not_found")


def test_s3_without_its_settings_refuses_to_start(settings: Settings) -> None:
    incomplete = make_settings(None, None, storage_backend="s3", s3_bucket="b")
    with pytest.raises(RuntimeError, match="CAREBOOK_S3_ACCESS_KEY_ID") as error:
        create_storage(incomplete)
    assert "CAREBOOK_S3_BUCKET" not in str(error.value)


def test_s3_without_an_endpoint_is_aws_in_the_configured_region(settings: Settings) -> None:
    aws = make_settings(
        None,
        None,
        storage_backend="s3",
        s3_bucket="records",
        s3_region="eu-west-1",
        s3_access_key_id=KEY_ID,
        s3_secret_access_key=SECRET,
    )
    storage = create_storage(aws)
    assert isinstance(storage, S3Storage)
    assert storage.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
