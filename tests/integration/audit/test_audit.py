"""The audit trail: every read of a patient's records writes a row in the same transaction,
and admins (only) read the trail through GET /v1/audit, filtered and newest first."""

from __future__ import annotations

import httpx
import pytest

from app.kit.db import Database
from tests.fixtures.problems import assert_problem
from tests.fixtures.records import RECORD, CareTeam, add_records, audit_rows


async def test_every_read_writes_one_row(
    http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    ids = await add_records(database, team.patient, team.staff, 3)
    newest_first = [str(record_id) for record_id in reversed(ids)]
    for member in (team.patient, team.provider.account, team.staff, team.admin):
        response = await http.get(team.records_path(), headers=member.headers)
        assert response.status_code == 200
    rows = await audit_rows(database, "records.list")
    assert [row[0] for row in rows] == [
        team.patient.id,
        team.provider.id,
        team.staff.id,
        team.admin.id,
    ]
    for _, entity, entity_id, details in rows:
        assert (entity, entity_id) == ("patient", str(team.patient.id))
        assert details == {"record_ids": newest_first, "count": 3, "first_page": True}

    page = await http.get(team.records_path(), params={"limit": 2}, headers=team.staff.headers)
    await http.get(
        team.records_path(),
        params={"cursor": page.json()["next_cursor"]},
        headers=team.staff.headers,
    )
    *_, first, second = await audit_rows(database, "records.list")
    assert first[3]["record_ids"] == newest_first[:2]
    assert second[3] == {"record_ids": newest_first[2:], "count": 1, "first_page": False}

    detail = await http.get(f"{team.records_path()}/{ids[0]}", headers=team.provider.headers)
    assert detail.status_code == 200
    assert await audit_rows(database, "record.read") == [
        (team.provider.id, "medical_record", str(ids[0]), {"patient_id": str(team.patient.id)})
    ]


async def test_creating_a_record_is_audited(
    http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    response = await http.post(team.records_path(), json=RECORD, headers=team.provider.headers)
    record_id = response.json()["record"]["id"]
    assert await audit_rows(database, "record.create") == [
        (
            team.provider.id,
            "medical_record",
            record_id,
            {"patient_id": str(team.patient.id), "size_bytes": 11},
        )
    ]


async def test_a_refused_read_writes_nothing(
    http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    await add_records(database, team.patient, team.staff, 1)
    response = await http.get(team.records_path(), headers=team.other_staff.headers)
    assert response.status_code == 404
    assert await audit_rows(database, "records.list") == []


@pytest.mark.parametrize("who", ["patient", "staff", "other_patient"])
async def test_only_admins_read_the_trail(
    http: httpx.AsyncClient, team: CareTeam, who: str
) -> None:
    member = getattr(team, who)
    assert_problem(await http.get("/v1/audit", headers=member.headers), 403, "forbidden")
    provider = await http.get("/v1/audit", headers=team.provider.headers)
    assert_problem(provider, 403, "forbidden")
    assert_problem(await http.get("/v1/audit"), 401, "unauthorized")


async def test_the_trail_filtered_and_paged_newest_first(
    http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    (record_id,) = await add_records(database, team.patient, team.staff, 1)
    for member in (team.patient, team.staff, team.admin):
        assert (await http.get(team.records_path(), headers=member.headers)).status_code == 200
    await http.get(f"{team.records_path()}/{record_id}", headers=team.staff.headers)
    await http.get(team.records_path(team.other_patient), headers=team.admin.headers)

    everything = (await http.get("/v1/audit", headers=team.admin.headers)).json()
    assert [item["action"] for item in everything["items"]] == [
        "records.list",
        "record.read",
        "records.list",
        "records.list",
        "records.list",
    ]
    assert everything["items"][0]["entity_id"] == str(team.other_patient.id)
    item = everything["items"][1]
    assert set(item) == {"id", "actor_id", "action", "entity", "entity_id", "at", "details"}
    assert isinstance(item["id"], str)
    assert item["actor_id"] == str(team.staff.id)

    params: dict[str, str | int] = {
        "entity": "patient",
        "entity_id": str(team.patient.id),
        "limit": 2,
    }
    first = (await http.get("/v1/audit", params=params, headers=team.admin.headers)).json()
    assert [i["actor_id"] for i in first["items"]] == [str(team.admin.id), str(team.staff.id)]
    rest = await http.get(
        "/v1/audit",
        params={**params, "cursor": first["next_cursor"]},
        headers=team.admin.headers,
    )
    assert [i["actor_id"] for i in rest.json()["items"]] == [str(team.patient.id)]
    assert rest.json()["next_cursor"] is None

    records = await http.get(
        "/v1/audit", params={"entity": "medical_record"}, headers=team.admin.headers
    )
    assert [i["entity_id"] for i in records.json()["items"]] == [str(record_id)]
    by_actor = await http.get(
        "/v1/audit", params={"actor_id": str(team.patient.id)}, headers=team.admin.headers
    )
    assert [i["actor_id"] for i in by_actor.json()["items"]] == [str(team.patient.id)]
    nothing = await http.get("/v1/audit", params={"entity": "clinic"}, headers=team.admin.headers)
    assert nothing.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "bogus"},
        {"cursor": "WyJ4Il0"},  # ["x"]
        {"cursor": "WzBd"},  # [0]
        {"limit": 0},
        {"limit": 101},
        {"actor_id": "someone"},
        {"entity": ""},
        {"entity": "patient", "entity_id": "x" * 201},
        {"entity_id": "01a23035-3898-73ed-900f-73b4c6e6b95d"},  # an id needs its entity
    ],
)
async def test_bad_parameters_are_validation_errors(
    http: httpx.AsyncClient, team: CareTeam, params: dict[str, str | int]
) -> None:
    response = await http.get("/v1/audit", params=params, headers=team.admin.headers)
    assert_problem(response, 422, "validation_error")
