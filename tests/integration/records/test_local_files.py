"""The local backend's signed file URLs: an upload and a download work until they expire,
and fail when any part of them is changed; uploads are exactly the signed type and size."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from app.integrations.storage import LocalStorage, derived_signing_key
from app.kit.db import Database
from tests.fixtures.problems import assert_problem
from tests.fixtures.records import RECORD, CareTeam, audit_rows

CONTENT = b"hello world"  # RECORD's 11 bytes


async def _create(http: httpx.AsyncClient, team: CareTeam, **changes: Any) -> dict[str, Any]:
    response = await http.post(
        team.records_path(), json={**RECORD, **changes}, headers=team.staff.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _upload(
    http: httpx.AsyncClient, created: dict[str, Any], content: Any = CONTENT, **headers: str
) -> httpx.Response:
    return await http.put(
        created["upload_url"], content=content, headers={**created["upload_headers"], **headers}
    )


def _changed(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), **params}
    return parts._replace(query=urlencode(query)).geturl()


def _storage(app: FastAPI) -> LocalStorage:
    storage = app.state.storage
    assert isinstance(storage, LocalStorage)
    return storage


@pytest.fixture
def clock(records_app: FastAPI) -> Iterator[Callable[[datetime], None]]:
    """Set the time the app's storage signs and verifies with (no sleeping for expiry)."""
    storage = _storage(records_app)
    original = storage.clock

    def set_time(at: datetime) -> None:
        storage.clock = lambda: at

    yield set_time
    storage.clock = original


async def test_upload_then_download(
    records_app: FastAPI, http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    created = await _create(http, team)
    uploaded = await _upload(http, created)
    assert uploaded.status_code == 204, uploaded.text

    listed = await http.get(team.records_path(), headers=team.patient.headers)
    (item,) = listed.json()["items"]
    download = await http.get(item["download_url"])
    assert download.status_code == 200, download.text
    assert download.content == CONTENT
    assert download.headers["content-type"].startswith("text/plain")
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"Blood test.txt\"; filename*=UTF-8''Blood%20test.txt"
    )
    assert download.headers["x-content-type-options"] == "nosniff"

    folder = _storage(records_app).root
    assert (folder / "patients" / str(team.patient.id) / item["id"]).read_bytes() == CONTENT
    assert not list(folder.rglob("*.part"))

    rows = await audit_rows(database, "record.download")
    assert [row[:3] for row in rows] == [(team.patient.id, "medical_record", item["id"])]
    assert rows[0][3] == {"patient_id": str(team.patient.id)}


async def test_a_records_file_is_written_once(
    records_app: FastAPI, http: httpx.AsyncClient, team: CareTeam
) -> None:
    # A leaked upload URL, still within its lifetime, cannot replace what was uploaded.
    created = await _create(http, team)
    assert (await _upload(http, created)).status_code == 204
    again = await _upload(http, created, b"HELLO WORLD")
    assert_problem(again, 409, "already_uploaded")
    path = _storage(records_app).root / "patients" / str(team.patient.id) / created["record"]["id"]
    assert path.read_bytes() == b"hello world"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file is left"


async def test_signed_urls_work_until_they_expire(
    http: httpx.AsyncClient, team: CareTeam, clock: Callable[[datetime], None]
) -> None:
    signed_at = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    clock(signed_at)
    created = await _create(http, team)
    lifetime = datetime.fromisoformat(created["upload_expires_at"]) - signed_at
    assert lifetime == timedelta(seconds=900)

    clock(signed_at + lifetime - timedelta(seconds=1))
    assert (await _upload(http, created)).status_code == 204
    clock(signed_at + lifetime)
    assert_problem(await _upload(http, created), 403, "url_expired")

    clock(signed_at)
    (item,) = (await http.get(team.records_path(), headers=team.admin.headers)).json()["items"]
    clock(signed_at + lifetime - timedelta(seconds=1))
    assert (await http.get(item["download_url"])).status_code == 200
    clock(signed_at + lifetime + timedelta(days=1))
    assert_problem(await http.get(item["download_url"]), 403, "url_expired")


async def test_a_url_signed_with_a_past_expiry_is_refused(
    records_app: FastAPI, http: httpx.AsyncClient, team: CareTeam
) -> None:
    created = await _create(http, team)
    key = f"patients/{team.patient.id}/{created['record']['id']}"
    past = LocalStorage(
        Path("unused"),
        derived_signing_key(records_app.state.settings),
        clock=lambda: datetime.now(UTC) - timedelta(hours=2),
    )
    upload = past.presign_upload(
        key,
        content_type="text/plain",
        size_bytes=11,
        expires_in=900,
        base_url="http://carebook.test",
    )
    response = await http.put(upload.url, content=CONTENT, headers=upload.headers)
    assert_problem(response, 403, "url_expired")


@pytest.mark.parametrize(
    "tamper",
    [
        {"sig": "A" * 43},
        {"sig": ""},
        {"expires": "9999999999"},
        {"size": "12"},
        {"ctype": "application/pdf"},
        {"expires": "soon"},
    ],
)
async def test_a_changed_upload_url_is_refused(
    http: httpx.AsyncClient, team: CareTeam, tamper: dict[str, str]
) -> None:
    created = await _create(http, team)
    url = _changed(created["upload_url"], **tamper)
    content_type = tamper.get("ctype", "text/plain")
    response = await http.put(url, content=CONTENT, headers={"Content-Type": content_type})
    assert_problem(response, 403, "signature_invalid")


async def test_an_upload_url_is_for_its_own_key(http: httpx.AsyncClient, team: CareTeam) -> None:
    first, second = await _create(http, team), await _create(http, team)
    url = first["upload_url"].replace(first["record"]["id"], second["record"]["id"])
    assert_problem(await _upload(http, {**first, "upload_url": url}), 403, "signature_invalid")


@pytest.mark.parametrize(
    "tamper",
    [
        {"sig": "A" * 43},
        {"actor": "00000000-0000-7000-8000-000000000000"},
        {"name": "evil.html"},
        {"ctype": "text/html"},
        {"expires": "9999999999"},
    ],
)
async def test_a_changed_download_url_is_refused(
    http: httpx.AsyncClient, team: CareTeam, tamper: dict[str, str]
) -> None:
    created = await _create(http, team)
    assert (await _upload(http, created)).status_code == 204
    (item,) = (await http.get(team.records_path(), headers=team.admin.headers)).json()["items"]
    assert (await http.get(item["download_url"])).status_code == 200
    response = await http.get(_changed(item["download_url"], **tamper))
    assert_problem(response, 403, "signature_invalid")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files/patients/..%2F..%2F..%2Fetc/passwd",
        "/v1/files/patients/x/y",
        "/v1/files/etc/passwd",
        "/v1/files/%2Fetc%2Fpasswd",
    ],
)
async def test_keys_are_checked_strictly(http: httpx.AsyncClient, path: str) -> None:
    params = {"expires": "9999999999", "ctype": "text/plain", "size": "1", "sig": "x"}
    assert_problem(await http.get(path, params=params), 403, "signature_invalid")
    put = await http.put(path, params=params, content=b"x", headers={"Content-Type": "text/plain"})
    assert_problem(put, 403, "signature_invalid")


async def test_the_upload_must_have_the_signed_type(
    http: httpx.AsyncClient, team: CareTeam
) -> None:
    created = await _create(http, team)
    response = await _upload(http, created, **{"Content-Type": "text/html"})
    assert_problem(response, 415, "unsupported_media_type")


async def test_a_longer_body_is_refused_and_nothing_is_kept(
    records_app: FastAPI, http: httpx.AsyncClient, team: CareTeam
) -> None:
    created = await _create(http, team)
    assert_problem(await _upload(http, created, CONTENT + b"!"), 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(4):
            yield b"12345"

    assert_problem(await _upload(http, created, chunks()), 413, "payload_too_large")
    folder = _storage(records_app).root
    assert not list(folder.rglob(f"*{created['record']['id']}*"))


async def test_a_shorter_body_is_refused(http: httpx.AsyncClient, team: CareTeam) -> None:
    created = await _create(http, team)
    assert_problem(await _upload(http, created, b"hello"), 422, "validation_error")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"hello"

    assert_problem(await _upload(http, created, chunks()), 422, "validation_error")


async def test_uploads_larger_than_the_request_limit_pass_when_signed_for(
    records_app: FastAPI, http: httpx.AsyncClient, team: CareTeam
) -> None:
    size = records_app.state.settings.max_body_bytes + 1
    created = await _create(http, team, content_type="application/pdf", size_bytes=size)
    response = await _upload(http, created, b"%" * size)
    assert response.status_code == 204, response.text


async def test_a_file_not_yet_uploaded_is_not_found(
    http: httpx.AsyncClient, team: CareTeam
) -> None:
    await _create(http, team)
    (item,) = (await http.get(team.records_path(), headers=team.admin.headers)).json()["items"]
    assert_problem(await http.get(item["download_url"]), 404, "not_found")


async def test_a_title_in_any_script_names_the_download(
    http: httpx.AsyncClient, team: CareTeam
) -> None:
    created = await _create(http, team, title="Радиография / грудь")
    assert (await _upload(http, created)).status_code == 204
    (item,) = (await http.get(team.records_path(), headers=team.admin.headers)).json()["items"]
    download = await http.get(item["download_url"])
    assert download.status_code == 200
    assert download.headers["content-disposition"] == (
        'attachment; filename="___________ _ _____.txt"; '
        "filename*=UTF-8''%D0%A0%D0%B0%D0%B4%D0%B8%D0%BE%D0%B3%D1%80%D0%B0%D1%84%D0%B8%D1%8F"
        "%20%2F%20%D0%B3%D1%80%D1%83%D0%B4%D1%8C.txt"
    )
