"""What a booking costs PostgreSQL, counted at the wire (as in
tests/integration/kit/test_read_round_trips.py): a booking is 7 statements (it was 11), a
request for a slot already taken or a replay is turned away in two statements before BEGIN (no
lock, no write, no transaction), a reschedule is 8 (it was 10) and a patient's cancellation 4
(it was 5).

The app under test has one pooled connection, so every request also shows that it needs only
one at a time; its second request of a kind reuses the statements the first one prepared.
"""

from __future__ import annotations

from datetime import date, time
from typing import Any

import httpx
from sqlalchemy import text

from app.kit.db import Database
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Account, Accounts
from tests.fixtures.booking import Booking, ProviderSetup, local_instant, next_local_day
from tests.fixtures.postgres_proxy import PostgresProxy, Traffic, proxied_app
from tests.fixtures.problems import assert_problem


def _shape(traffic: Traffic) -> list[str]:
    """Each statement as its first words: enough to tell what it is."""
    shapes = []
    for statement in traffic.statements:
        words = statement.sql.split()
        if words[0].upper() == "INSERT":
            shapes.append(f"INSERT {words[2]}")
        elif "INSERT INTO appointments" in statement.sql:
            # The appointment with its outbox event, in one statement.
            assert "INSERT INTO outbox" in statement.sql
            shapes.append("INSERT appointments, outbox")
        elif "UPDATE appointments" in statement.sql and "INSERT INTO outbox" in statement.sql:
            shapes.append("UPDATE, outbox")  # a status change with its event
        elif words[0].upper() == "WITH":
            shapes.append("slot state")
        elif "FROM appointments a" in statement.sql and "EXISTS" in statement.sql:
            shapes.append("taken?")
        elif "FOR NO KEY UPDATE" in statement.sql:
            shapes.append("provider lock")
        else:
            shapes.append(words[0].rstrip(";").upper())
    return shapes


async def _post(
    client: httpx.AsyncClient,
    account: Account,
    provider: ProviderSetup,
    day: date,
    hour: int,
    key: str,
) -> httpx.Response:
    start = local_instant(day, time(hour, 0), provider.timezone)
    return await client.post(
        "/v1/appointments",
        json={"provider_id": str(provider.id), "start": start.isoformat()},
        headers={**account.headers, "Idempotency-Key": key},
    )


async def _booked(database: Database, provider: ProviderSetup) -> int:
    async with database.reading(primary=True) as session:
        count = await session.scalar(
            text("SELECT count(*) FROM appointments WHERE provider_id = :p"), {"p": provider.id}
        )
    return int(count or 0)


async def test_a_booking_is_seven_statements_and_answers_from_the_rows_it_wrote(
    settings: Settings,
    database: Database,
    proxy: PostgresProxy,
    booking: Booking,
    accounts: Accounts,
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)

    async with proxied_app(settings, proxy) as (_, client):
        warm = await _post(client, patient, provider, day, 9, "warm")
        assert warm.status_code == 201, warm.text
        with proxy.recording() as traffic:
            response = await _post(client, patient, provider, day, 10, "recorded")
        fetched = await client.get(
            f"/v1/appointments/{response.json()['id']}", headers=patient.headers
        )

    assert response.status_code == 201, response.text
    assert _shape(traffic) == [
        "taken?",  # the fail-fast read, before the lock and before BEGIN
        "BEGIN",
        "provider lock",  # with the patient and the response's names
        "slot state",  # under the lock: the check that decides
        "INSERT appointments, outbox",
        "INSERT idempotency_keys",
        "COMMIT",
    ], traffic.sql
    assert len(traffic.statements) == traffic.round_trips == 7
    # Built from the INSERT's RETURNING and the lock's read, it is what a read of it gives.
    assert fetched.status_code == 200
    assert response.json() == fetched.json()


async def test_a_taken_slot_and_a_replay_are_answered_before_the_lock(
    settings: Settings,
    database: Database,
    proxy: PostgresProxy,
    booking: Booking,
    accounts: Accounts,
) -> None:
    provider = await booking.provider()
    winner = await accounts.create(Role.PATIENT)
    losers = [await accounts.create(Role.PATIENT) for _ in range(2)]
    day = next_local_day(provider.timezone)

    async with proxied_app(settings, proxy) as (_, client):
        won = await _post(client, winner, provider, day, 9, "mine")
        assert won.status_code == 201, won.text
        warm = await _post(client, losers[0], provider, day, 9, "theirs")
        assert_problem(warm, 409, "slot_unavailable")
        with proxy.recording() as lost:
            refused = await _post(client, losers[1], provider, day, 9, "theirs")
        with proxy.recording() as replayed:
            replay = await _post(client, winner, provider, day, 9, "mine")

    assert_problem(refused, 409, "slot_unavailable")
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == won.json()
    # The indexed read finds the slot taken and the key is looked up (a retry of the booking
    # that took it is a replay), both before BEGIN: no transaction, no lock, no write. (A
    # user's first request here may start with the authentication's read of the user's state.)
    for traffic in (lost, replayed):
        assert _shape(traffic)[-2:] == ["taken?", "SELECT"], traffic.sql
        assert "FROM idempotency_keys" in traffic.sql[-1]
        assert not {"BEGIN", "ROLLBACK", "provider lock"} & set(_shape(traffic)), traffic.sql
        assert len(traffic.statements) <= 3, traffic.sql
    assert await _booked(database, provider) == 1


async def test_a_patients_cancellation_is_four_statements(
    settings: Settings,
    database: Database,
    proxy: PostgresProxy,
    booking: Booking,
    accounts: Accounts,
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)

    async with proxied_app(settings, proxy) as (_, client):
        ids = []
        for hour in (9, 10):
            booked = await _post(client, patient, provider, day, hour, f"k{hour}")
            assert booked.status_code == 201, booked.text
            ids.append(booked.json()["id"])
        body: dict[str, Any] = {"reason": "cannot come"}
        warm = await client.post(
            f"/v1/appointments/{ids[0]}/cancel", json=body, headers=patient.headers
        )
        assert warm.status_code == 200, warm.text
        with proxy.recording() as traffic:
            response = await client.post(
                f"/v1/appointments/{ids[1]}/cancel", json=body, headers=patient.headers
            )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert _shape(traffic) == ["BEGIN", "SELECT", "UPDATE, outbox", "COMMIT"], traffic.sql


async def test_a_reschedule_is_eight_statements(
    settings: Settings,
    database: Database,
    proxy: PostgresProxy,
    booking: Booking,
    accounts: Accounts,
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)

    async with proxied_app(settings, proxy) as (_, client):
        moves = []
        for hour in (9, 10):
            booked = await _post(client, patient, provider, day, hour, f"k{hour}")
            assert booked.status_code == 201, booked.text
            moves.append(
                (booked.json()["id"], local_instant(day, time(hour + 5), provider.timezone))
            )
        # The first one warms the connection's statements up; the second is recorded.
        responses, recorded = [], []
        for n, (appointment_id, start) in enumerate(moves):
            with proxy.recording() as traffic:
                responses.append(
                    await client.post(
                        f"/v1/appointments/{appointment_id}/reschedule",
                        json={"start": start.isoformat()},
                        headers={**patient.headers, "Idempotency-Key": f"move-{n}"},
                    )
                )
            recorded.append(traffic)

    assert [r.status_code for r in responses] == [200, 200], responses[-1].text
    assert _shape(recorded[-1]) == [
        "BEGIN",
        "SELECT",  # the appointment as the caller may see it
        "provider lock",
        "slot state",
        "UPDATE",
        "INSERT outbox",
        "INSERT idempotency_keys",
        "COMMIT",
    ], recorded[-1].sql
