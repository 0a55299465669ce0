"""Bursts on several slots of one provider at once: one winner per slot, and every loser gets
the contract's 409 `slot_unavailable` (DESIGN §5), never a 503 for waiting on the pool.

Losers are turned away by an indexed read before the provider lock, so they do not queue
behind it holding a pooled connection; the app has its default pool (far fewer connections
than requests), as in production.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, time, timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.kit.db import Database
from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, local_instant, many_patients, next_local_day
from tests.fixtures.problems import assert_problem

PATIENTS = 60
SLOTS = 3


async def test_every_patient_on_every_slot_at_once_one_winner_each(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, database: Database
) -> None:
    provider = await booking.provider()
    day = next_local_day(provider.timezone)
    # Slots apart from each other, so that one patient may win several of them.
    starts = [local_instant(day, time(10 + 2 * n, 0), provider.timezone) for n in range(SLOTS)]
    patients = await many_patients(app, PATIENTS)

    requests = [
        (
            start,
            client.post(
                "/v1/appointments",
                json={"provider_id": str(provider.id), "start": start.isoformat()},
                headers={**headers, "Idempotency-Key": f"burst-{n}-{start.isoformat()}"},
            ),
        )
        for start in starts
        for n, headers in enumerate(patients)
    ]
    responses = await asyncio.gather(*(request for _, request in requests))

    by_slot: dict[datetime, Counter[tuple[int, str | None]]] = {
        start: Counter() for start in starts
    }
    for (start, _), response in zip(requests, responses, strict=True):
        code = response.json().get("code") if response.status_code != 201 else None
        by_slot[start][(response.status_code, code)] += 1
    for start in starts:
        assert by_slot[start] == {(201, None): 1, (409, "slot_unavailable"): PATIENTS - 1}, (
            start,
            by_slot[start],
        )
    async with database.reading(primary=True) as session:
        rows = await session.execute(
            text(
                "SELECT starts_at, count(*) AS n FROM appointments WHERE provider_id = :p "
                "AND status IN ('booked', 'checked_in') GROUP BY starts_at"
            ),
            {"p": provider.id},
        )
        per_slot = {row.starts_at: row.n for row in rows}
    assert per_slot == dict.fromkeys(starts, 1)


async def test_the_fast_refusal_keeps_the_contracts_order_of_refusals(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    """A taken slot that the provider has since taken time off over is still `not_a_slot`
    (the provider is away): the fast read refuses only what the checks under the lock would
    refuse as taken."""
    provider = await booking.provider()
    first = await accounts.create(Role.PATIENT)
    second = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(9, 0), provider.timezone)
    assert (await booking.book(first, provider, start)).status_code == 201
    assert_problem(await booking.book(second, provider, start), 409, "slot_unavailable")
    away = await client.post(
        f"/v1/providers/{provider.id}/time-off",
        json={
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(hours=1)).isoformat(),
        },
        headers=provider.headers,
    )
    assert away.status_code == 201, away.text

    assert_problem(await booking.book(second, provider, start), 422, "not_a_slot")
