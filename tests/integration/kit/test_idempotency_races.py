"""One key, many different requests at once: exactly one of them takes effect.

The key's record is the transaction's last write, `INSERT … ON CONFLICT`: a request whose
INSERT meets another's uncommitted record waits for it, then finds the key taken, rolls its
own work back and is refused (DESIGN §4: `idempotency_key_reused`, same key, other request).
Each request books with another provider, so nothing but the key orders them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import time

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
