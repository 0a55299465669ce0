"""The records list: newest first, keyset pages, one response with every download URL, a
constant number of statements, and URLs cached in Redis for less than their lifetime."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from app.kit.db import Database
from app.settings import Settings
from tests.fixtures.app import client_for, count_statements, running_app
from tests.fixtures.cache import CacheCounts
from tests.fixtures.problems import assert_problem
from tests.fixtures.records import CareTeam, add_records, records_settings
from tests.fixtures.redis_proxy import RedisProxy, redis_proxy  # noqa: F401 (a fixture)


async def test_newest_first_in_keyset_pages(
    http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    ids = await add_records(database, team.patient, team.staff, 7)
    seen: list[str] = []
    cursor = None
    for _ in range(5):  # bounded: 7 records in pages of 3 are 3 pages
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = await http.get(team.records_path(), params=params, headers=team.admin.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(record_id) for record_id in reversed(ids)]
    first = (await http.get(team.records_path(), headers=team.admin.headers)).json()
    assert len(first["items"]) == 7
    assert first["next_cursor"] is None
    assert set(first["items"][0]) == {
        "id",
        "patient_id",
        "uploaded_by",
        "record_type",
        "title",
        "content_type",
        "size_bytes",
        "uploaded_at",
        "download_url",
    }


async def test_an_empty_list_is_an_empty_page(http: httpx.AsyncClient, team: CareTeam) -> None:
    response = await http.get(team.records_path(), headers=team.patient.headers)
    assert response.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "many"},
        {"cursor": "not-a-cursor"},
        {"cursor": "W10"},
    ],
)
async def test_bad_page_parameters_are_validation_errors(
    http: httpx.AsyncClient, team: CareTeam, params: dict[str, str | int]
) -> None:
    response = await http.get(team.records_path(), params=params, headers=team.patient.headers)
    assert_problem(response, 422, "validation_error")


async def test_a_malformed_patient_id_is_a_validation_error(
    http: httpx.AsyncClient, team: CareTeam
) -> None:
    response = await http.get("/v1/patients/nobody/records", headers=team.admin.headers)
    assert_problem(response, 422, "validation_error")


async def _statements(
    app: FastAPI, http: httpx.AsyncClient, team: CareTeam, headers: dict[str, str], limit: int
) -> int:
    database: Database = app.state.database
    with count_statements(database.primary) as log:
        response = await http.get(team.records_path(), params={"limit": limit}, headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == limit
    assert all(item["download_url"] for item in response.json()["items"])
    return log.count


async def test_statements_do_not_grow_with_the_page(
    records_app: FastAPI, http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    await add_records(database, team.patient, team.staff, 60)
    for member in (team.patient, team.provider.account, team.staff, team.admin):
        small = await _statements(records_app, http, team, member.headers, 2)
        large = await _statements(records_app, http, team, member.headers, 50)
        # The access check and the page are one statement, the audit row the other.
        assert small == large == 2, member.user.role


async def test_download_urls_are_cached_for_half_their_lifetime(
    records_app: FastAPI, http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    await add_records(database, team.patient, team.staff, 3)
    counts = CacheCounts()
    settings: Settings = records_app.state.settings
    first = (await http.get(team.records_path(), headers=team.staff.headers)).json()["items"]
    hits = counts.hits.get("record_url", 0)
    again = (await http.get(team.records_path(), headers=team.staff.headers)).json()["items"]
    assert [i["download_url"] for i in again] == [i["download_url"] for i in first]
    assert counts.hits.get("record_url", 0) == hits + 3

    redis: Redis = records_app.state.redis
    keys = [key async for key in redis.scan_iter(match="cb:v1:record_url:*")]
    assert len(keys) == 3
    for key in keys:
        ttl = await redis.ttl(key)
        assert 0 < ttl <= settings.presigned_url_ttl_seconds // 2

    # A URL names who it was issued to: another reader gets URLs of their own.
    theirs = (await http.get(team.records_path(), headers=team.patient.headers)).json()["items"]
    assert {i["download_url"] for i in theirs}.isdisjoint(i["download_url"] for i in first)


async def test_with_redis_down_urls_are_signed_afresh(
    settings: Settings,
    redis_proxy: RedisProxy,  # noqa: F811 (the imported fixture)
    records_app: FastAPI,
    team: CareTeam,
    database: Database,
    tmp_path: Path,
) -> None:
    await add_records(database, team.patient, team.staff, 4)
    app_settings = records_settings(settings, tmp_path, redis_url=redis_proxy.url)
    async with running_app(app_settings) as app, client_for(app) as client:
        counts = CacheCounts()
        await redis_proxy.set_mode("refuse")
        for _ in range(2):
            with count_statements(app.state.database.primary) as log:
                response = await client.get(team.records_path(), headers=team.provider.headers)
            assert response.status_code == 200, response.text
            items = response.json()["items"]
            assert len(items) == 4
            assert all("/v1/files/patients/" in item["download_url"] for item in items)
            assert log.count == 2
        assert counts.hits.get("record_url", 0) == 0
        real_redis: Redis = records_app.state.redis  # the same Redis, not through the proxy
        assert await real_redis.keys("cb:v1:record_url:*") == []
        # The URLs work: a signed download of a record without a file is a clean 404.
        file = await client.get(items[0]["download_url"])
        assert_problem(file, 404, "not_found")
