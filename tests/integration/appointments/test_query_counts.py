"""N+1 cannot hide (audit F1, F2): statements per request do not grow with the data."""

from __future__ import annotations

from datetime import time, timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.kit.db import Database
from app.models import Role
from tests.fixtures.app import Account, Accounts, count_statements
from tests.fixtures.booking import Booking, ProviderSetup, local_instant, next_local_day


async def _history(
    database: Database, provider: ProviderSetup, patient: Account, count: int
) -> None:
    start = local_instant(next_local_day(provider.timezone), time(0, 0), provider.timezone)
    async with database.unit_of_work() as session:
        await session.execute(
            text(
                "INSERT INTO appointments (id, provider_id, provider_key, patient_id, "
                "patient_key, clinic_id, starts_at, ends_at) "
                "SELECT gen_random_uuid(), p.user_id, p.key, u.id, u.key, p.clinic_id, "
                "CAST(:s AS timestamptz) + g * interval '1 hour', "
                "CAST(:s AS timestamptz) + g * interval '1 hour' + interval '30 minutes' "
                "FROM providers p, users u, generate_series(0, :n - 1) AS g "
                "WHERE p.user_id = :p AND u.id = :u"
            ),
            {"p": provider.id, "u": patient.id, "s": start, "n": count},
        )


async def _listing_statements(
    app: FastAPI, client: httpx.AsyncClient, account: Account, limit: int
) -> int:
    database: Database = app.state.database
    with count_statements(database.primary) as log:
        response = await client.get(
            "/v1/appointments", params={"limit": limit}, headers=account.headers
        )
    assert response.status_code == 200
    assert len(response.json()["items"]) == limit
    return log.count


async def test_listing_5_and_50_costs_the_same(
    app: FastAPI,
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
    database: Database,
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    staff = await accounts.create(Role.STAFF, clinic_id=provider.clinic_id)
    await _history(database, provider, patient, 60)

    for account in (patient, provider.account, staff):
        small = await _listing_statements(app, client, account, 5)
        large = await _listing_statements(app, client, account, 50)
        assert small == large == 1


async def test_availability_is_one_statement(
    app: FastAPI,
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
    database: Database,
) -> None:
    provider = await booking.provider()
    await _history(database, provider, await accounts.create(Role.PATIENT), 20)
    day = next_local_day(provider.timezone)
    with count_statements(database.primary) as log:
        response = await client.get(
            f"/v1/providers/{provider.id}/availability",
            params={"from": day.isoformat(), "to": (day + timedelta(days=30)).isoformat()},
        )
    assert response.status_code == 200
    assert response.json()["slots"]
    assert log.count == 1


async def test_multi_provider_search_is_one_statement(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, database: Database
) -> None:
    clinic_id = await booking.clinic()
    for n in range(6):
        await booking.provider(clinic_id=clinic_id, full_name=f"Dr. Search {n}", specialty="Optics")
    day = next_local_day("Europe/London")
    with count_statements(database.primary) as log:
        response = await client.get(
            "/v1/availability",
            params={"date": day.isoformat(), "days": 7, "specialty": "optics", "limit": 4},
        )
    assert response.status_code == 200
    body = response.json()
    assert [item["provider"]["full_name"] for item in body["items"]] == [
        f"Dr. Search {n}" for n in range(4)
    ]
    assert all(item["slots"] for item in body["items"])
    assert body["next_cursor"]
    assert log.count == 1
    rest = await client.get(
        "/v1/availability",
        params={
            "date": day.isoformat(),
            "days": 7,
            "specialty": "optics",
            "cursor": body["next_cursor"],
        },
    )
    assert [item["provider"]["full_name"] for item in rest.json()["items"]] == [
        "Dr. Search 4",
        "Dr. Search 5",
    ]
    assert rest.json()["next_cursor"] is None
