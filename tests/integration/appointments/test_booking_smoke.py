from __future__ import annotations

from datetime import time

from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, local_instant, next_local_day


async def test_book_a_free_slot_then_it_is_gone(booking: Booking, accounts: Accounts) -> None:
    provider = await booking.provider(timezone="America/New_York")
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(10, 0), provider.timezone)

    response = await booking.book(patient, provider, start)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "booked"
    assert body["start"] == start.isoformat()
    slots = await booking.free_slots(provider, day, day)
    assert start.isoformat() not in {s["start"] for s in slots}
    assert len(slots) == 15
