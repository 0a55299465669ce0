"""Every appointment event says when the appointment is (and, moved, when it was), in UTC: a
subscriber can then act on just the dates a change touches (availability invalidation)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import httpx
from sqlalchemy import text

from app.kit.db import Database
from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, local_instant, next_local_day


async def _events(database: Database) -> list[tuple[str, dict[str, Any]]]:
    async with database.reading(primary=True) as session:
        rows = await session.execute(text("SELECT topic, payload FROM outbox ORDER BY id"))
        return [(row.topic, row.payload) for row in rows if row.topic.startswith("appointment.")]


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


async def test_each_event_carries_the_appointments_times(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider(timezone="America/New_York")
    patient = await accounts.create(Role.PATIENT)
    staff = await accounts.create(Role.STAFF, clinic_id=provider.clinic_id)
    day = next_local_day(provider.timezone)
    at = {h: local_instant(day, time(h, 0), provider.timezone) for h in (9, 10, 11, 12, 13)}
    ids = {}
    for hour in (9, 10, 11, 12):
        booked = await booking.book(patient, provider, at[hour])
        assert booked.status_code == 201, booked.text
        ids[hour] = booked.json()["id"]
    moved = await client.post(
        f"/v1/appointments/{ids[9]}/reschedule",
        json={"start": at[13].isoformat()},
        headers={**patient.headers, "Idempotency-Key": "move"},
    )
    cancelled = await client.post(
        f"/v1/appointments/{ids[10]}/cancel", json={"reason": "x"}, headers=patient.headers
    )
    bulk = await client.post(
        "/v1/appointments/bulk",
        json={"action": "check_in", "ids": [ids[11]]},
        headers=staff.headers,
    )
    ranged = await client.post(
        f"/v1/providers/{provider.id}/cancellations",
        json={
            "from": at[12].isoformat(),
            "to": (at[12] + timedelta(minutes=1)).isoformat(),
            "reason": "ill",
        },
        headers=staff.headers,
    )
    assert [r.status_code for r in (moved, cancelled, bulk, ranged)] == [200] * 4

    events = await _events(database)
    slot = timedelta(minutes=provider.slot_minutes)
    expected_start = {("appointment.booked", ids[h]): at[h] for h in (9, 10, 11, 12)} | {
        ("appointment.rescheduled", ids[9]): at[13],
        ("appointment.cancelled", ids[10]): at[10],
        ("appointment.checked_in", ids[11]): at[11],
        ("appointment.cancelled", ids[12]): at[12],
    }
    assert {(topic, p["appointment_id"]) for topic, p in events} == set(expected_start)
    for topic, payload in events:
        start = expected_start[(topic, payload["appointment_id"])]
        assert payload["starts_at"] == _utc(start), (topic, payload)
        assert payload["ends_at"] == _utc(start + slot), (topic, payload)
        assert payload["provider_id"] == str(provider.id)
        assert payload["clinic_id"] == str(provider.clinic_id)
    (rescheduled,) = [p for topic, p in events if topic == "appointment.rescheduled"]
    assert rescheduled["previous_starts_at"] == _utc(at[9])
    assert rescheduled["previous_ends_at"] == _utc(at[9] + slot)
    assert rescheduled["old_starts_at"] == _utc(at[9])  # the key it had before, kept
