"""No double booking, ever (audit F4): real concurrency against real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import time, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.kit.db import Database
from app.models import Role
from tests.fixtures.app import Account, Accounts
from tests.fixtures.booking import (
    Booking,
    ProviderSetup,
    local_instant,
    many_patients,
    next_local_day,
)

CONTENDERS = 60


async def _count_active(database: Database, provider: ProviderSetup) -> int:
    async with database.reading(primary=True) as session:
        count = await session.scalar(
            text(
                "SELECT count(*) FROM appointments WHERE provider_id = :p "
                "AND status IN ('booked', 'checked_in')"
            ),
            {"p": provider.id},
        )
    return int(count or 0)


async def test_many_patients_one_slot_exactly_one_wins(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, database: Database
) -> None:
    provider = await booking.provider()
    start = local_instant(next_local_day(provider.timezone), time(11, 0), provider.timezone)
    patients = await many_patients(app, CONTENDERS)
    body = {"provider_id": str(provider.id), "start": start.isoformat()}

    responses = await asyncio.gather(
        *(
            client.post(
                "/v1/appointments",
                json=body,
                headers={**headers, "Idempotency-Key": f"race-{n}"},
            )
            for n, headers in enumerate(patients)
        )
    )

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: CONTENDERS - 1}, [r.text for r in responses[:3]]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"slot_unavailable"}
    assert await _count_active(database, provider) == 1


async def test_concurrent_reschedules_into_one_slot_one_winner(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, database: Database
) -> None:
    provider = await booking.provider(slot_minutes=30)
    day = next_local_day(provider.timezone)
    patients = await many_patients(app, 12)
    booked = []
    for n, headers in enumerate(patients):
        start = local_instant(day, time(9, 0), provider.timezone) + timedelta(minutes=30 * n)
        response = await client.post(
            "/v1/appointments",
            json={"provider_id": str(provider.id), "start": start.isoformat()},
            headers={**headers, "Idempotency-Key": f"seat-{n}"},
        )
        assert response.status_code == 201, response.text
        booked.append((headers, response.json()["id"]))
    target = local_instant(day, time(16, 0), provider.timezone)

    responses = await asyncio.gather(
        *(
            client.post(
                f"/v1/appointments/{appointment_id}/reschedule",
                json={"start": target.isoformat()},
                headers={**headers, "Idempotency-Key": f"move-{appointment_id}"},
            )
            for headers, appointment_id in booked
        )
    )

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 409: len(booked) - 1}
    async with database.reading(primary=True) as session:
        at_target = await session.scalar(
            text(
                "SELECT count(*) FROM appointments WHERE provider_id = :p AND starts_at = :s "
                "AND status = 'booked'"
            ),
            {"p": provider.id, "s": target},
        )
    assert at_target == 1
    assert await _count_active(database, provider) == len(booked)


async def test_concurrent_identical_requests_with_one_key_make_one_appointment(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    start = local_instant(next_local_day(provider.timezone), time(14, 0), provider.timezone)

    responses = await asyncio.gather(
        *(booking.book(patient, provider, start, key="same-key") for _ in range(20))
    )

    created = [r for r in responses if r.status_code == 201]
    others = [r for r in responses if r.status_code != 201]
    assert created, [r.text for r in responses]
    # Every success is the same appointment: the original or a replay of it.
    assert len({r.json()["id"] for r in created}) == 1
    assert sum(1 for r in created if "idempotent-replayed" not in r.headers) == 1
    assert all(r.status_code == 409 for r in others)
    assert {r.json()["code"] for r in others} <= {"idempotency_in_flight"}
    assert await _count_active(database, provider) == 1


async def _raw_insert(
    database: Database, provider: ProviderSetup, patient: Account, offset: int
) -> str:
    start = local_instant(next_local_day(provider.timezone), time(10, 0), provider.timezone)
    starts_at = start + timedelta(minutes=offset)
    try:
        async with database.unit_of_work() as session:
            await session.execute(
                text(
                    "INSERT INTO appointments (id, provider_id, provider_key, patient_id, "
                    "patient_key, clinic_id, starts_at, ends_at) "
                    "SELECT gen_random_uuid(), p.user_id, p.key, u.id, u.key, p.clinic_id, "
                    "CAST(:s AS timestamptz), CAST(:s AS timestamptz) + interval '30 minutes' "
                    "FROM providers p, users u WHERE p.user_id = :p AND u.id = :u"
                ),
                {"p": provider.id, "u": patient.id, "s": starts_at},
            )
    except IntegrityError as exc:
        return "excluded" if "ex_appointments" in str(exc.orig) else f"unexpected: {exc}"
    except DBAPIError as exc:
        # Unlocked writers that conflict on both constraints can wait on each other: PostgreSQL
        # breaks the cycle (deadlock) or the wait outlives lock_timeout. Rejected all the same.
        message = str(exc.orig)
        return "waited out" if "deadlock" in message or "lock timeout" in message else message
    return "inserted"


async def test_backstop_rejects_overlaps_written_around_the_service(
    booking: Booking, accounts: Accounts, database: Database
) -> None:
    """Raw INSERTs with no lock, all at once: the exclusion constraint admits one."""
    provider = await booking.provider()
    patients = [await accounts.create(Role.PATIENT) for _ in range(3)]
    offsets = [0, 0, 5, 10, 15, 20, 25, 29] * 2
    outcomes = await asyncio.gather(
        *(
            _raw_insert(database, provider, patients[n % 3], offset)
            for n, offset in enumerate(offsets)
        )
    )
    assert outcomes.count("inserted") == 1
    assert set(outcomes) <= {"inserted", "excluded", "waited out"}
    assert await _count_active(database, provider) == 1
    # Back to back is fine: a visit starting when the winner's 30 minutes end does not overlap.
    winner = offsets[outcomes.index("inserted")]
    assert await _raw_insert(database, provider, patients[0], winner + 30) == "inserted"


@pytest.mark.parametrize("status", ["cancelled", "completed", "no_show"])
async def test_backstop_ignores_inactive_appointments(
    status: str, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    assert await _raw_insert(database, provider, patient, 0) == "inserted"
    async with database.unit_of_work() as session:
        await session.execute(
            text("UPDATE appointments SET status = :s WHERE provider_id = :p"),
            {"s": status, "p": provider.id},
        )
    assert await _raw_insert(database, provider, patient, 0) == "inserted"
