"""Idempotency-Key semantics of the contract (audit F5)."""

from __future__ import annotations

from datetime import time

import httpx
from sqlalchemy import text

from app.kit.db import Database
from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, local_instant, next_local_day


async def test_missing_or_malformed_key(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    start = local_instant(next_local_day(provider.timezone), time(9, 0), provider.timezone)
    body = {"provider_id": str(provider.id), "start": start.isoformat()}

    missing = await client.post("/v1/appointments", json=body, headers=patient.headers)
    assert missing.status_code == 400
    assert missing.json()["code"] == "idempotency_key_missing"
    blank = await client.post(
        "/v1/appointments", json=body, headers={**patient.headers, "Idempotency-Key": "  "}
    )
    assert blank.status_code == 400
    too_long = await client.post(
        "/v1/appointments", json=body, headers={**patient.headers, "Idempotency-Key": "k" * 256}
    )
    assert too_long.status_code == 422
    assert too_long.json()["code"] == "validation_error"


async def test_replay_returns_stored_status_and_body(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    start = local_instant(next_local_day(provider.timezone), time(9, 0), provider.timezone)

    first = await booking.book(patient, provider, start, key="k-1")
    again = await booking.book(patient, provider, start, key="k-1")

    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    async with database.reading(primary=True) as session:
        count = await session.scalar(text("SELECT count(*) FROM appointments"))
    assert count == 1


async def test_same_key_different_request_is_refused(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    first = await booking.book(
        patient, provider, local_instant(day, time(9, 0), provider.timezone), key="k"
    )
    assert first.status_code == 201

    other_body = await booking.book(
        patient, provider, local_instant(day, time(10, 0), provider.timezone), key="k"
    )
    assert other_body.status_code == 422
    assert other_body.json()["code"] == "idempotency_key_reused"

    other_path = await client.post(
        f"/v1/appointments/{first.json()['id']}/reschedule",
        json={"start": local_instant(day, time(11, 0), provider.timezone).isoformat()},
        headers={**patient.headers, "Idempotency-Key": "k"},
    )
    assert other_path.status_code == 422
    assert other_path.json()["code"] == "idempotency_key_reused"


async def test_keys_are_scoped_to_the_user(booking: Booking, accounts: Accounts) -> None:
    provider = await booking.provider()
    alice = await accounts.create(Role.PATIENT)
    bob = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    a = await booking.book(
        alice, provider, local_instant(day, time(9, 0), provider.timezone), key="shared"
    )
    b = await booking.book(
        bob, provider, local_instant(day, time(10, 0), provider.timezone), key="shared"
    )
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


async def test_failed_request_stores_nothing_and_can_be_retried(
    booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    alice = await accounts.create(Role.PATIENT)
    bob = await accounts.create(Role.PATIENT)
    start = local_instant(next_local_day(provider.timezone), time(9, 0), provider.timezone)
    taken = await booking.book(alice, provider, start)
    assert taken.status_code == 201

    refused = await booking.book(bob, provider, start, key="retry-me")
    assert refused.status_code == 409
    assert refused.json()["code"] == "slot_unavailable"
    retried = await booking.book(bob, provider, start, key="retry-me")
    # Re-executed (not a replay of the failure), hence no replay header.
    assert retried.status_code == 409
    assert "idempotent-replayed" not in retried.headers


async def test_expired_key_starts_afresh(
    booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    first = await booking.book(
        patient, provider, local_instant(day, time(9, 0), provider.timezone), key="old"
    )
    assert first.status_code == 201
    async with database.unit_of_work() as session:
        await session.execute(
            text("UPDATE idempotency_keys SET created_at = created_at - interval '25 hours'")
        )
    second = await booking.book(
        patient, provider, local_instant(day, time(10, 0), provider.timezone), key="old"
    )
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]


async def test_reschedule_replay(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    booked = await booking.book(
        patient, provider, local_instant(day, time(9, 0), provider.timezone)
    )
    url = f"/v1/appointments/{booked.json()['id']}/reschedule"
    body = {"start": local_instant(day, time(15, 0), provider.timezone).isoformat()}
    headers = {**patient.headers, "Idempotency-Key": "move"}

    moved = await client.post(url, json=body, headers=headers)
    replayed = await client.post(url, json=body, headers=headers)

    assert moved.status_code == 200, moved.text
    assert replayed.status_code == 200
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == moved.json()
    assert moved.json()["id"] == booked.json()["id"]
