"""One key, many different requests at once: exactly one of them takes effect; a replay that
had to redo the work undoes it.

The key's record is the transaction's last write, `INSERT … ON CONFLICT`: a request whose
INSERT meets another's uncommitted record waits for it, then finds the key taken, rolls its
own work back and is refused (DESIGN §4: `idempotency_key_reused`, same key, other request).
Each request books with another provider, so nothing but the key orders them. The work of
the ones refused is rolled back, and so are the events they would have published after commit.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import time
from typing import Any

import httpx
from sqlalchemy import text

from app.kit.db import Database
from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, local_instant, next_local_day

REQUESTS = 8


async def test_one_key_for_different_bookings_at_once_books_one(
    booking: Booking, accounts: Accounts, database: Database
) -> None:
    providers = [await booking.provider() for _ in range(REQUESTS)]
    published: list[dict[str, Any]] = []

    async def record(events: Any) -> None:
        published.extend(payload for _, payload in events)

    assert database.events is not None
    database.events.subscribe("appointment.", record)
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(providers[0].timezone)
    # Different providers and hours: no overlap for the patient, a different request each.
    starts = [
        local_instant(day, time(9 + n, 0), provider.timezone)
        for n, provider in enumerate(providers)
    ]

    responses = await asyncio.gather(
        *(
            booking.book(patient, provider, start, key="one-key")
            for provider, start in zip(providers, starts, strict=True)
        )
    )

    outcomes = Counter(
        (r.status_code, None if r.status_code == 201 else r.json()["code"]) for r in responses
    )
    assert outcomes == {(201, None): 1, (422, "idempotency_key_reused"): REQUESTS - 1}, [
        r.text for r in responses
    ]
    async with database.reading(primary=True) as session:
        booked = await session.scalar(
            text("SELECT count(*) FROM appointments WHERE patient_id = :p"), {"p": patient.id}
        )
        events = await session.scalar(
            text("SELECT count(*) FROM outbox WHERE topic = 'appointment.booked'")
        )
    assert booked == events == 1
    # The one that took effect is what the key replays.
    (n,) = [n for n, r in enumerate(responses) if r.status_code == 201]
    created = responses[n]
    again = await booking.book(patient, providers[n], starts[n], key="one-key")
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == created.json()
    # Only the booking that committed reached this process's subscribers (the cache).
    assert [p["appointment_id"] for p in published] == [created.json()["id"]]


async def test_a_replay_over_a_freed_slot_books_nothing_and_publishes_nothing(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    """The slot was booked with the key, then cancelled: the retry finds it free, books it
    again, meets the key's stored outcome at its last write, rolls back and replays."""
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    start = local_instant(next_local_day(provider.timezone), time(9, 0), provider.timezone)
    first = await booking.book(patient, provider, start, key="again")
    assert first.status_code == 201, first.text
    cancelled = await client.post(
        f"/v1/appointments/{first.json()['id']}/cancel", json={}, headers=patient.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    published: list[str] = []

    async def record(events: Any) -> None:
        published.extend(topic for topic, _ in events)

    assert database.events is not None
    database.events.subscribe("appointment.", record)

    replay = await booking.book(patient, provider, start, key="again")

    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert published == []
    async with database.reading(primary=True) as session:
        rows = await session.scalar(
            text("SELECT count(*) FROM appointments WHERE patient_id = :p"), {"p": patient.id}
        )
        booked_events = await session.scalar(
            text("SELECT count(*) FROM outbox WHERE topic = 'appointment.booked'")
        )
    assert rows == booked_events == 1
