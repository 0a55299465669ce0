"""GET /v1/analytics/clinics: who sees what, bounds and errors, CSV, and its statement timeout.

The figures themselves are checked against appointments in test_stats_exact.py; here the
stats rows are arranged directly."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.analytics.endpoints import wants_csv
from app.kit.db import Database
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Accounts, client_for, make_settings, running_app
from tests.fixtures.booking import Booking
from tests.fixtures.problems import assert_problem

URL = "/v1/analytics/clinics"
FIRST, LAST = date(2026, 1, 1), date(2026, 12, 31)


async def _stats(database: Database, clinic_id: uuid.UUID, day: date, *figures: int) -> None:
    booked, completed, cancelled, no_show = figures
    async with database.unit_of_work() as session:
        await session.execute(
            text(
                "INSERT INTO clinic_daily_stats (clinic_id, day, booked, completed, cancelled, "
                "no_show) VALUES (:c, :d, :b, :co, :ca, :n)"
            ),
            {"c": clinic_id, "d": day, "b": booked, "co": completed, "ca": cancelled, "n": no_show},
        )


def _params(first: date = FIRST, last: date = LAST, **extra: Any) -> dict[str, Any]:
    return {"from": first.isoformat(), "to": last.isoformat(), **extra}


@pytest.fixture
async def clinics(database: Database, booking: Booking) -> dict[str, uuid.UUID]:
    """Three clinics: two with figures inside 2026 (and some outside), one without any."""
    ids = {
        "Bravo": await booking.clinic("Bravo Clinic", "America/New_York"),
        "Alpha": await booking.clinic("Alpha Clinic", "Asia/Kolkata"),
        "Charlie": await booking.clinic("Charlie Clinic", "Europe/London"),
    }
    await _stats(database, ids["Alpha"], date(2026, 1, 1), 10, 6, 2, 2)
    await _stats(database, ids["Alpha"], date(2026, 12, 31), 5, 1, 1, 3)
    await _stats(database, ids["Alpha"], date(2025, 12, 31), 100, 100, 0, 0)  # outside
    await _stats(database, ids["Bravo"], date(2026, 6, 1), 4, 0, 4, 0)
    await _stats(database, ids["Bravo"], date(2027, 1, 1), 100, 0, 0, 100)  # outside
    return ids


async def test_admin_sees_every_clinic_by_name_with_exact_sums(
    client: httpx.AsyncClient, accounts: Accounts, clinics: dict[str, uuid.UUID]
) -> None:
    admin = await accounts.create(Role.ADMIN)
    response = await client.get(URL, params=_params(), headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["from"] == "2026-01-01"
    assert body["to"] == "2026-12-31"
    assert body["next_cursor"] is None
    assert body["items"] == [
        {
            "clinic_id": str(clinics["Alpha"]),
            "clinic_name": "Alpha Clinic",
            "booked": 15,
            "completed": 7,
            "cancelled": 3,
            "no_show": 5,
            "no_show_rate": 5 / 12,
        },
        {
            "clinic_id": str(clinics["Bravo"]),
            "clinic_name": "Bravo Clinic",
            "booked": 4,
            "completed": 0,
            "cancelled": 4,
            "no_show": 0,
            "no_show_rate": None,  # no visit with an outcome yet
        },
        {
            "clinic_id": str(clinics["Charlie"]),
            "clinic_name": "Charlie Clinic",
            "booked": 0,
            "completed": 0,
            "cancelled": 0,
            "no_show": 0,
            "no_show_rate": None,
        },
    ]
    one = await client.get(
        URL, params=_params(clinic_id=str(clinics["Bravo"])), headers=admin.headers
    )
    assert [item["clinic_name"] for item in one.json()["items"]] == ["Bravo Clinic"]


async def test_pages_follow_the_cursor_and_a_bad_cursor_is_refused(
    client: httpx.AsyncClient, accounts: Accounts, clinics: dict[str, uuid.UUID]
) -> None:
    admin = await accounts.create(Role.ADMIN)
    names: list[str] = []
    cursor = None
    for _ in range(5):
        params = _params(limit=1, **({"cursor": cursor} if cursor else {}))
        body = (await client.get(URL, params=params, headers=admin.headers)).json()
        assert len(body["items"]) == 1
        names.append(body["items"][0]["clinic_name"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert names == ["Alpha Clinic", "Bravo Clinic", "Charlie Clinic"]
    for bad in ("not-a-cursor", "WyJ4Il0", "WzEsMl0"):
        response = await client.get(URL, params=_params(cursor=bad), headers=admin.headers)
        assert_problem(response, 422, "validation_error")
    for limit in (0, 101):
        response = await client.get(URL, params=_params(limit=limit), headers=admin.headers)
        assert_problem(response, 422, "validation_error")


async def test_staff_see_only_their_clinic(
    client: httpx.AsyncClient, accounts: Accounts, clinics: dict[str, uuid.UUID]
) -> None:
    staff = await accounts.create(Role.STAFF, clinic_id=clinics["Bravo"])
    body = (await client.get(URL, params=_params(), headers=staff.headers)).json()
    assert [(i["clinic_name"], i["booked"]) for i in body["items"]] == [("Bravo Clinic", 4)]
    # Asking for another clinic finds nothing rather than widening the view.
    other = await client.get(
        URL, params=_params(clinic_id=str(clinics["Alpha"])), headers=staff.headers
    )
    assert other.status_code == 200
    assert other.json()["items"] == []
    as_csv = await client.get(
        URL, params=_params(), headers={**staff.headers, "Accept": "text/csv"}
    )
    assert [row["clinic_name"] for row in csv.DictReader(io.StringIO(as_csv.text))] == [
        "Bravo Clinic"
    ]


@pytest.mark.parametrize("role", [Role.PATIENT, Role.PROVIDER])
async def test_other_roles_are_forbidden(
    client: httpx.AsyncClient, accounts: Accounts, database: Database, role: Role
) -> None:
    user = await accounts.create(role)
    assert_problem(await client.get(URL, params=_params(), headers=user.headers), 403, "forbidden")


async def test_anonymous_callers_are_unauthorized(
    client: httpx.AsyncClient, database: Database
) -> None:
    assert_problem(await client.get(URL, params=_params()), 401, "unauthorized")


async def test_range_bounds(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    admin = await accounts.create(Role.ADMIN)

    async def ask(first: date, last: date) -> httpx.Response:
        return await client.get(URL, params=_params(first, last), headers=admin.headers)

    leap = date(2028, 1, 1)
    assert (await ask(leap, leap + timedelta(days=365))).status_code == 200  # 366 dates
    assert (await ask(FIRST, FIRST)).status_code == 200  # one date
    assert_problem(await ask(leap, leap + timedelta(days=366)), 422, "range_too_large")  # 367
    assert_problem(await ask(FIRST, FIRST + timedelta(days=5000)), 422, "range_too_large")
    body = assert_problem(await ask(FIRST, FIRST - timedelta(days=1)), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["query", "to"]


@pytest.mark.parametrize(
    "params",
    [
        {"to": "2026-01-31"},
        {"from": "2026-01-01"},
        {"from": "2026-13-01", "to": "2026-12-31"},
        {"from": "yesterday", "to": "2026-12-31"},
        {"from": "2026-01-01", "to": "2026-12-31", "clinic_id": "not-a-uuid"},
    ],
)
async def test_bad_parameters_are_validation_errors(
    client: httpx.AsyncClient, accounts: Accounts, database: Database, params: dict[str, str]
) -> None:
    admin = await accounts.create(Role.ADMIN)
    response = await client.get(URL, params=params, headers=admin.headers)
    assert_problem(response, 422, "validation_error")


async def test_csv_streams_the_same_rows(
    client: httpx.AsyncClient,
    accounts: Accounts,
    booking: Booking,
    clinics: dict[str, uuid.UUID],
) -> None:
    # A name a spreadsheet would run as a formula is defused; commas and quotes are quoted.
    await booking.clinic('=HYPERLINK("x"), Delta', "Europe/Berlin")
    admin = await accounts.create(Role.ADMIN)
    as_json = (await client.get(URL, params=_params(), headers=admin.headers)).json()["items"]
    response = await client.get(
        URL, params=_params(), headers={**admin.headers, "Accept": "text/csv"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "Accept" in [part.strip() for part in response.headers["vary"].split(",")]
    assert (
        'filename="clinic-analytics-2026-01-01-2026-12-31.csv"'
        in (response.headers["content-disposition"])
    )
    lines = response.text.split("\r\n")
    assert lines[0] == "clinic_id,clinic_name,booked,completed,cancelled,no_show,no_show_rate"
    assert lines[-1] == ""
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == len(as_json) == 4
    for row, item in zip(rows, as_json, strict=True):
        name = item["clinic_name"]
        assert row["clinic_name"] == ("'" + name if name.startswith("=") else name)
        assert row["clinic_id"] == item["clinic_id"]
        for key in ("booked", "completed", "cancelled", "no_show"):
            assert int(row[key]) == item[key]
        rate = item["no_show_rate"]
        assert row["no_show_rate"] == ("" if rate is None else repr(rate))
    # JSON still wins when preferred; errors stay problem+json whatever was asked for.
    preferred = await client.get(
        URL,
        params=_params(),
        headers={**admin.headers, "Accept": "application/json, text/csv;q=0.5"},
    )
    assert preferred.headers["content-type"].startswith("application/json")
    refused = await client.get(
        URL,
        params=_params(FIRST, FIRST + timedelta(days=400)),
        headers={**admin.headers, "Accept": "text/csv"},
    )
    assert_problem(refused, 422, "range_too_large")


@pytest.mark.parametrize(
    ("accept", "csv_wanted"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("text/csv", True),
        ("TEXT/CSV", True),
        ("text/csv;q=0.9, application/json;q=0.8", True),
        ("application/json, text/csv;q=0.5", False),
        ("text/csv;q=0", False),
        ("text/csv;q=oops", False),
        ("text/plain, text/csv", True),
    ],
)
def test_content_negotiation(accept: str | None, csv_wanted: bool) -> None:
    assert wants_csv(accept) is csv_wanted


async def test_the_statement_timeout_cancels_a_slow_report(
    settings: Settings,
    database: Database,
    accounts: Accounts,
    clinics: dict[str, uuid.UUID],
) -> None:
    """The report waits on a lock the test holds on `clinic_daily_stats`; only the analytics
    timeout is set (the connection-wide statement and lock timeouts are off in this app), so
    only `SET LOCAL statement_timeout` can end the wait, and it ends as a 503."""
    admin = await accounts.create(Role.ADMIN)
    slow = make_settings(
        settings.database_url,
        settings.redis_url,
        analytics_statement_timeout_ms=200,
        db_statement_timeout_ms=0,
        db_lock_timeout_ms=0,
    )
    async with running_app(slow) as app, client_for(app) as http:
        assert (await http.get(URL, params=_params(), headers=admin.headers)).status_code == 200
        async with database.primary.connect() as blocker:
            transaction = await blocker.begin()
            await blocker.execute(text("LOCK TABLE clinic_daily_stats IN ACCESS EXCLUSIVE MODE"))
            try:
                response = await asyncio.wait_for(
                    http.get(URL, params=_params(), headers=admin.headers), timeout=30
                )
            finally:
                await transaction.rollback()
        body = assert_problem(response, 503, "service_unavailable")
        assert response.headers["retry-after"] == "1"
        assert "SELECT" not in body["detail"]
        # The setting ended with its transaction: the pooled connection has no timeout left.
        assert await _pooled_statement_timeout(app) == "0"
        assert (await http.get(URL, params=_params(), headers=admin.headers)).status_code == 200


async def _pooled_statement_timeout(app: FastAPI) -> str:
    database: Database = app.state.database
    async with database.reading() as session:
        value: str = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
    return value
