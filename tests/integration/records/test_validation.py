"""Bad input to POST /v1/patients/{id}/records is a clean 422 problem naming the field."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fixtures.problems import assert_problem
from tests.fixtures.records import RECORD, CareTeam

BAD: list[tuple[dict[str, Any], str]] = [
    ({"content_type": "text/html"}, "content_type"),
    ({"content_type": "text/plain; charset=utf-8"}, "content_type"),
    ({"content_type": ""}, "content_type"),
    ({"content_type": "x" * 101}, "content_type"),
    ({"size_bytes": 0}, "size_bytes"),
    ({"size_bytes": -1}, "size_bytes"),
    ({"size_bytes": 25 * 1024 * 1024 + 1}, "size_bytes"),
    ({"size_bytes": "11"}, "size_bytes"),
    ({"size_bytes": True}, "size_bytes"),
    ({"size_bytes": 1.5}, "size_bytes"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "t" * 201}, "title"),
    ({"title": 7}, "title"),
    ({"title": "a\u0000b"}, "title"),
    ({"title": "line\nbreak"}, "title"),
    ({"record_type": ""}, "record_type"),
    ({"record_type": "r" * 51}, "record_type"),
    ({"record_type": "<script>"}, "record_type"),
    ({"record_type": None}, "record_type"),
]


async def test_bad_fields_are_validation_errors(http: httpx.AsyncClient, team: CareTeam) -> None:
    # One arrangement for every case: accounts are slow to make (argon2), requests are not.
    for change, field in BAD:
        response = await http.post(
            team.records_path(), json={**RECORD, **change}, headers=team.staff.headers
        )
        body = assert_problem(response, 422, "validation_error")
        assert any(error["loc"][-1] == field for error in body["errors"]), (change, body)
    for missing in sorted(RECORD):
        data = {k: v for k, v in RECORD.items() if k != missing}
        response = await http.post(team.records_path(), json=data, headers=team.staff.headers)
        body = assert_problem(response, 422, "validation_error")
        assert any(error["loc"][-1] == missing for error in body["errors"]), missing
    listed = await http.get(team.records_path(), headers=team.staff.headers)
    assert listed.json()["items"] == []


async def test_a_body_that_is_not_json_is_a_validation_error(
    http: httpx.AsyncClient, team: CareTeam
) -> None:
    response = await http.post(
        team.records_path(),
        content=b"{not json",
        headers={**team.staff.headers, "Content-Type": "application/json"},
    )
    assert_problem(response, 422, "validation_error")


async def test_accepted_values_are_normalised(http: httpx.AsyncClient, team: CareTeam) -> None:
    data = {**RECORD, "content_type": " Application/PDF ", "title": "  X-ray é  ", "size_bytes": 1}
    response = await http.post(team.records_path(), json=data, headers=team.staff.headers)
    assert response.status_code == 201, response.text
    record = response.json()["record"]
    assert (record["content_type"], record["title"]) == ("application/pdf", "X-ray é")
    maximum = {**RECORD, "size_bytes": 25 * 1024 * 1024}
    response = await http.post(team.records_path(), json=maximum, headers=team.staff.headers)
    assert response.status_code == 201, response.text
