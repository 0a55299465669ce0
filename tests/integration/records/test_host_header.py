"""Signed record URLs of the local backend name a host the operator configured (issue 12): the
public base URL when set, else the request's host, which must be an allowed one. A request
naming another host gets no URL at all."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.kit.db import Database
from app.settings import Settings
from tests.fixtures.app import client_for, running_app
from tests.fixtures.problems import assert_problem
from tests.fixtures.records import RECORD, CareTeam, add_records, records_settings


async def test_a_foreign_host_gets_no_signed_url(
    http: httpx.AsyncClient, database: Database, team: CareTeam
) -> None:
    await add_records(database, team.patient, team.staff, 1)
    evil = {**team.staff.headers, "Host": "evil.example.net"}

    listed = await http.get(team.records_path(), headers=evil)
    assert_problem(listed, 400, "host_not_allowed")
    assert "evil.example.net" not in listed.text

    created = await http.post(team.records_path(), json=RECORD, headers=evil)
    assert_problem(created, 400, "host_not_allowed")

    # Nothing was signed, and nothing was cached, for that host: the next (good) request's
    # URLs name its own host.
    good = await http.get(team.records_path(), headers=team.staff.headers)
    assert good.status_code == 200, good.text
    urls = [item["download_url"] for item in good.json()["items"]]
    assert urls
    assert all(url.startswith("http://carebook.test/v1/files/") for url in urls)


async def test_urls_use_the_allowed_host_the_request_named(
    http: httpx.AsyncClient, team: CareTeam
) -> None:
    created = await http.post(
        team.records_path(), json=RECORD, headers={**team.staff.headers, "Host": "127.0.0.1:8000"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["upload_url"].startswith("http://127.0.0.1:8000/v1/files/patients/")


async def test_a_public_base_url_wins_over_any_host(
    settings: Settings, database: Database, team: CareTeam, tmp_path: Path
) -> None:
    base = "https://api.clinic.example.org"
    app_settings = records_settings(settings, tmp_path, public_base_url=base)
    async with running_app(app_settings) as app, client_for(app) as client:
        await add_records(database, team.patient, team.staff, 2)
        for host in ("carebook.test", "localhost:8000"):
            listed = await client.get(
                team.records_path(), headers={**team.staff.headers, "Host": host}
            )
            assert listed.status_code == 200, listed.text
            urls = [item["download_url"] for item in listed.json()["items"]]
            assert len(urls) == 2
            assert all(url.startswith(f"{base}/v1/files/patients/") for url in urls), urls
