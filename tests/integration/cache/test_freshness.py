"""A change is visible in the very next request, also through another API process (audit F6).

Two app instances share one database and one Redis, as two replicas behind a load balancer
would. The cache is warmed through instance A, the change is made through instance B, and the
next read through A must already reflect it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, time, timedelta

import httpx
import pytest
from fastapi import FastAPI

from app.auth import service as auth_service
from app.availability.rules import BookingRules
from app.kit.db import Database
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import (
    Account,
    Accounts,
    client_for,
    count_statements,
    make_settings,
    running_app,
)
from tests.fixtures.booking import Booking, ProviderSetup, local_instant, next_local_day
from tests.fixtures.cache import CacheCounts, read_until_cached
from tests.fixtures.problems import assert_problem


@pytest.fixture
async def other_app(settings: Settings, database: Database) -> AsyncIterator[FastAPI]:
    async with running_app(settings) as app:
        yield app


async def _slots(client: httpx.AsyncClient, provider: ProviderSetup) -> list[str]:
    day = next_local_day(provider.timezone)
    response = await client.get(
        f"/v1/providers/{provider.id}/availability",
        params={"from": day.isoformat(), "to": day.isoformat()},
    )
    assert response.status_code == 200, response.text
    return [slot["start"] for slot in response.json()["slots"]]


async def _warm(app: FastAPI, client: httpx.AsyncClient, provider: ProviderSetup) -> list[str]:
    return await read_until_cached(CacheCounts(), "availability", lambda: _slots(client, provider))


Change = Callable[[httpx.AsyncClient, ProviderSetup, Account, str], Awaitable[None]]


async def _book(client: httpx.AsyncClient, p: ProviderSetup, patient: Account, at: str) -> None:
    response = await client.post(
        "/v1/appointments",
        json={"provider_id": str(p.id), "start": at},
        headers={**patient.headers, "Idempotency-Key": f"fresh-{at}"},
    )
    assert response.status_code == 201, response.text


async def _schedule(client: httpx.AsyncClient, p: ProviderSetup, _: Account, at: str) -> None:
    response = await client.put(
        f"/v1/providers/{p.id}/schedule",
        json={"rules": [{"weekday": d, "start": "13:00", "end": "17:00"} for d in range(1, 8)]},
        headers=p.headers,
    )
    assert response.status_code == 200, response.text


async def _time_off(client: httpx.AsyncClient, p: ProviderSetup, _: Account, at: str) -> None:
    response = await client.post(
        f"/v1/providers/{p.id}/time-off",
        json={"starts_at": at, "ends_at": at.replace("T09:00", "T12:00"), "reason": "training"},
        headers=p.headers,
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("change", [_book, _schedule, _time_off], ids=["book", "schedule", "off"])
async def test_change_through_b_is_seen_through_a(
    change: Change,
    app: FastAPI,
    other_app: FastAPI,
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
) -> None:
    provider = await booking.provider(slot_minutes=60)
    patient = await accounts.create(Role.PATIENT)
    nine = local_instant(next_local_day(provider.timezone), time(9, 0), provider.timezone)
    assert nine.isoformat() in await _warm(app, client, provider)

    async with client_for(other_app) as b:
        await change(b, provider, patient, nine.isoformat())

    assert nine.isoformat() not in await _slots(client, provider)


async def test_cancel_and_reschedule_through_b_free_slots_seen_through_a(
    app: FastAPI,
    other_app: FastAPI,
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
) -> None:
    provider = await booking.provider(slot_minutes=60)
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    nine = local_instant(day, time(9, 0), provider.timezone)
    ten = local_instant(day, time(10, 0), provider.timezone)
    booked = await booking.book(patient, provider, nine)
    assert booked.status_code == 201
    appointment_id = booked.json()["id"]

    async with client_for(other_app) as b:
        assert nine.isoformat() not in await _warm(app, client, provider)
        moved = await b.post(
            f"/v1/appointments/{appointment_id}/reschedule",
            json={"start": ten.isoformat()},
            headers={**patient.headers, "Idempotency-Key": "fresh-move"},
        )
        assert moved.status_code == 200
        after_move = await _slots(client, provider)
        assert nine.isoformat() in after_move
        assert ten.isoformat() not in after_move

        cancelled = await b.post(
            f"/v1/appointments/{appointment_id}/cancel", json={}, headers=patient.headers
        )
        assert cancelled.status_code == 200
        assert ten.isoformat() in await _slots(client, provider)


async def test_catalogue_and_profile_follow_changes_across_instances(
    app: FastAPI, other_app: FastAPI, client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(Role.ADMIN)
    first = await client.get("/v1/clinics")
    assert await client.get("/v1/clinics") is not None  # warm
    async with client_for(other_app) as b:
        created = await b.post(
            "/v1/clinics",
            json={"name": "Northside", "timezone": "Europe/Berlin"},
            headers=admin.headers,
        )
        assert created.status_code == 201
        provider = await b.post(
            "/v1/providers",
            json={
                "email": "dr.new@example.com",
                "password": "a-good-password",
                "full_name": "Dr. New",
                "clinic_id": created.json()["id"],
                "specialty": "Audiology",
                "timezone": "Europe/Berlin",
                "slot_minutes": 20,
            },
            headers=admin.headers,
        )
        assert provider.status_code == 201
    names = [c["name"] for c in (await client.get("/v1/clinics")).json()["items"]]
    assert "Northside" in names
    assert names != [c["name"] for c in first.json()["items"]]
    specialties = [s["name"] for s in (await client.get("/v1/specialties")).json()["items"]]
    assert "Audiology" in specialties
    listed = (await client.get("/v1/providers", params={"q": "new"})).json()["items"]
    assert [p["full_name"] for p in listed] == ["Dr. New"]


async def test_a_profile_stays_cached_through_bookings_and_follows_its_account(
    app: FastAPI,
    other_app: FastAPI,
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    url = f"/v1/providers/{provider.id}"
    profile = await client.get(url)
    assert profile.status_code == 200, profile.text
    nine = local_instant(next_local_day(provider.timezone), time(9, 0), provider.timezone)
    async with client_for(other_app) as b:
        await _book(b, provider, patient, nine.isoformat())

    database: Database = app.state.database
    with count_statements(database.primary) as log:
        again = await client.get(url)
    assert again.content == profile.content
    assert log.count == 0  # a booking does not change a profile, so it stays cached

    other: Database = other_app.state.database
    async with other.unit_of_work() as session:  # `user.changed`, committed through B
        await auth_service.change_user(session, provider.id, is_active=False)
    assert_problem(await client.get(url), 404, "not_found")


async def test_stampede_of_misses_computes_once(
    settings: Settings, booking: Booking, database: Database
) -> None:
    """100 concurrent misses on one key (50 per instance) run the availability query once."""
    # 100 requests in the test's one event loop: on a loaded machine a Redis reply can wait
    # longer than the default 0.25 s socket timeout for the loop, which the cache rightly takes
    # for an outage and then computes on its own. Coordination is under test here, not the
    # bounds on waits, so both instances get generous ones.
    generous = make_settings(
        settings.database_url, settings.redis_url, redis_socket_timeout_seconds=10.0
    )
    provider = await booking.provider()
    # Clear of the minimum notice, so that the window's cache key does not change with the
    # clock minute: a minute ending mid-burst would make the later requests a new key's misses.
    day = next_local_day(provider.timezone, days_ahead=5)
    last = day + timedelta(days=30)
    assert BookingRules.from_settings(generous).clock_key(day, last, datetime.now(UTC)) == "open"
    url = f"/v1/providers/{provider.id}/availability"
    params = {"from": day.isoformat(), "to": last.isoformat()}
    async with (
        running_app(generous) as first,
        running_app(generous) as second,
        client_for(first) as a,
        client_for(second) as b,
    ):
        for instance in (first, second):
            instance.state.cache.lock_wait_seconds = 30.0
        with (
            count_statements(first.state.database.primary) as a_log,
            count_statements(second.state.database.primary) as b_log,
        ):
            responses = await asyncio.gather(
                *(a.get(url, params=params) for _ in range(50)),
                *(b.get(url, params=params) for _ in range(50)),
            )
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    queries = [s for s in a_log.statements + b_log.statements if "generate_series" in s]
    assert len(queries) == 1
