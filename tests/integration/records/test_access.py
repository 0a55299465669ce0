"""Who may list, read and add a patient's records, and who is told "not found" (DESIGN §4)."""

from __future__ import annotations

import httpx
import pytest

from app.kit.db import Database
from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking
from tests.fixtures.problems import assert_problem
from tests.fixtures.records import RECORD, CareTeam, add_records, add_visit

SEE = ["patient", "provider", "staff", "admin"]
NOT_SEE = ["other_patient", "other_provider", "other_staff"]
ADD = ["provider", "staff", "admin"]


def _headers(team: CareTeam, who: str) -> dict[str, str]:
    member = getattr(team, who)
    return dict(member.headers)


@pytest.mark.parametrize("who", SEE)
async def test_the_care_team_lists_the_records(
    http: httpx.AsyncClient, team: CareTeam, database: Database, who: str
) -> None:
    (record_id,) = await add_records(database, team.patient, team.staff, 1)
    response = await http.get(team.records_path(), headers=_headers(team, who))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["id"] for item in body["items"]] == [str(record_id)]
    assert body["items"][0]["download_url"].startswith("http://carebook.test/v1/files/patients/")
    assert body["next_cursor"] is None

    detail = await http.get(f"{team.records_path()}/{record_id}", headers=_headers(team, who))
    assert detail.status_code == 200, detail.text
    assert detail.json()["id"] == str(record_id)
    assert detail.json()["download_url"]


@pytest.mark.parametrize("who", NOT_SEE)
async def test_everyone_else_is_told_not_found(
    http: httpx.AsyncClient, team: CareTeam, database: Database, who: str
) -> None:
    (record_id,) = await add_records(database, team.patient, team.staff, 1)
    headers = _headers(team, who)
    assert_problem(await http.get(team.records_path(), headers=headers), 404, "not_found")
    detail = await http.get(f"{team.records_path()}/{record_id}", headers=headers)
    assert_problem(detail, 404, "not_found")
    created = await http.post(team.records_path(), json=RECORD, headers=headers)
    assert_problem(created, 404, "not_found")


async def test_unknown_patients_and_non_patients_are_not_found_even_for_admins(
    http: httpx.AsyncClient, team: CareTeam
) -> None:
    headers = team.admin.headers
    for path in (
        "/v1/patients/00000000-0000-7000-8000-000000000000/records",
        team.records_path(team.staff),  # staff have no records
    ):
        assert_problem(await http.get(path, headers=headers), 404, "not_found")
        assert_problem(await http.post(path, json=RECORD, headers=headers), 404, "not_found")


async def test_a_record_of_another_patient_is_not_found_under_this_one(
    http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    (theirs,) = await add_records(database, team.other_patient, team.admin, 1)
    response = await http.get(f"{team.records_path()}/{theirs}", headers=team.admin.headers)
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize("who", ADD)
async def test_the_care_team_adds_records(
    http: httpx.AsyncClient, team: CareTeam, who: str
) -> None:
    response = await http.post(team.records_path(), json=RECORD, headers=_headers(team, who))
    assert response.status_code == 201, response.text
    body = response.json()
    record = body["record"]
    assert record["patient_id"] == str(team.patient.id)
    assert record["uploaded_by"] == str(getattr(team, who).id)
    assert {k: record[k] for k in RECORD} == RECORD
    assert body["upload_method"] == "PUT"
    assert body["upload_headers"] == {"Content-Type": "text/plain"}
    assert body["upload_url"].startswith(
        f"http://carebook.test/v1/files/patients/{team.patient.id}/{record['id']}?"
    )
    assert body["upload_expires_at"]
    listed = await http.get(team.records_path(), headers=team.patient.headers)
    assert [item["id"] for item in listed.json()["items"]] == [record["id"]]


async def test_a_patient_may_not_add_records(http: httpx.AsyncClient, team: CareTeam) -> None:
    own = await http.post(team.records_path(), json=RECORD, headers=team.patient.headers)
    assert_problem(own, 403, "forbidden")  # a role-level refusal about their own file
    other = await http.post(
        team.records_path(team.other_patient), json=RECORD, headers=team.patient.headers
    )
    assert_problem(other, 404, "not_found")  # someone else's: not theirs to know of


async def test_a_cancelled_visit_grants_nothing(
    http: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    staff = await accounts.create(Role.STAFF, clinic_id=provider.clinic_id)
    patient = await accounts.create(Role.PATIENT)
    await add_visit(database, provider, patient, status="cancelled")
    path = f"/v1/patients/{patient.id}/records"
    for member in (provider.account, staff):
        assert_problem(await http.get(path, headers=member.headers), 404, "not_found")
    # A past, completed visit does.
    await add_visit(database, provider, patient, status="completed", days_ahead=-30)
    for member in (provider.account, staff):
        assert (await http.get(path, headers=member.headers)).status_code == 200


async def test_records_need_a_bearer_token(http: httpx.AsyncClient, team: CareTeam) -> None:
    assert_problem(await http.get(team.records_path()), 401, "unauthorized")
    assert_problem(await http.post(team.records_path(), json=RECORD), 401, "unauthorized")
