"""`clinic_daily_stats` answers exactly what a GROUP BY over appointments answers: for random
visits across awkward time zones, after a rebuild, after incremental updates through the real
worker, when events are handled twice or out of order, and after a partial rebuild."""

from __future__ import annotations

import asyncio
import random
from datetime import date, time, timedelta
from typing import Any

import httpx
from arq.connections import ArqRedis
from fastapi import FastAPI
from sqlalchemy import text

from app.analytics import service
from app.analytics.tasks import (
    REBUILD_TIMEOUT_SECONDS,
    rebuild_clinic_stats,
    rebuild_stats,
    refresh_clinic_stats,
)
from app.appointments.events import COUNTED as APPOINTMENT_TOPICS
from app.kit.db import Database
from app.kit.outbox import Event
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, local_instant, next_local_day
from tests.fixtures.worker import run_worker_until_idle
from tests.integration.analytics.oracle import (
    YEAR_END,
    YEAR_START,
    assert_matches,
    group_by,
    interesting_ranges,
    report,
    seed_random_visits,
    zoneinfo_figures,
)
from workers.outbox import OutboxRelay
from workers.settings import worker_options


async def _admin_headers(accounts: Accounts) -> dict[str, str]:
    return (await accounts.create(Role.ADMIN)).headers


async def _assert_exact(
    client: httpx.AsyncClient,
    database: Database,
    headers: dict[str, str],
    first: date,
    last: date,
    **kwargs: Any,
) -> None:
    assert_matches(
        await report(client, headers, first, last, **kwargs), await group_by(database, first, last)
    )


async def test_rebuild_equals_a_group_by_over_random_visits(
    client: httpx.AsyncClient, database: Database, accounts: Accounts
) -> None:
    rng = random.Random(20261201)
    clinics = await seed_random_visits(database, rng, per_provider=150)
    summary = await rebuild_stats(database)
    assert summary.rows > 0
    assert summary.chunks >= 13  # a year and more, a month per chunk
    headers = await _admin_headers(accounts)

    # The oracle itself: PostgreSQL's zone arithmetic agrees with Python's on every visit.
    assert await group_by(database, YEAR_START, YEAR_END) == await zoneinfo_figures(
        database, YEAR_START, YEAR_END
    )
    for first, last in interesting_ranges(clinics, rng):
        await _assert_exact(client, database, headers, first, last)
    # Paged three clinics at a time: the same figures, nothing lost or repeated at the seams.
    await _assert_exact(client, database, headers, YEAR_START, YEAR_END, limit=3)

    # Staff see exactly their clinic's row.
    clinic_id = next(iter(clinics.clinic_ids))
    staff = await accounts.create(Role.STAFF, clinic_id=clinic_id)
    expected = await group_by(database, YEAR_START, YEAR_END)
    assert_matches(
        await report(client, staff.headers, YEAR_START, YEAR_END),
        {clinic_id: expected[clinic_id]},
    )


async def _relay_and_work(settings: Settings, database: Database, queue: ArqRedis) -> None:
    relay = OutboxRelay(database, queue)
    for _ in range(100):  # bounded: a few batches at most
        if await relay.relay_once() == 0:
            break
    await run_worker_until_idle(settings, queue)


async def _analytics_events(database: Database) -> list[Event]:
    async with database.reading(primary=True) as session:
        rows = await session.execute(
            text("SELECT id, topic, payload, processed_at FROM outbox ORDER BY id")
        )
        events = rows.all()
    assert all(row.processed_at is not None for row in events)
    return [Event(r.id, r.topic, r.payload) for r in events if r.topic in APPOINTMENT_TOPICS]


async def test_incremental_updates_through_the_worker_stay_exact(
    app: FastAPI,
    settings: Settings,
    client: httpx.AsyncClient,
    database: Database,
    queue: ArqRedis,
    accounts: Accounts,
    booking: Booking,
) -> None:
    rng = random.Random(7)
    clinics = await seed_random_visits(database, rng, per_provider=40)
    await rebuild_stats(database)
    admin = await accounts.create(Role.ADMIN)
    # A clinic east of UTC, so its local dates and UTC dates differ for part of each day.
    zone = "Pacific/Auckland"
    clinic_id = await booking.clinic("Live Clinic", zone)
    provider = await booking.provider(timezone=zone, clinic_id=clinic_id, slot_minutes=30)
    day = next_local_day(zone, days_ahead=3)
    starts = [local_instant(day, time(9, 0), zone) + timedelta(minutes=30 * n) for n in range(6)]
    ids = []
    for start in starts:
        patient = await accounts.create(Role.PATIENT)
        response = await booking.book(patient, provider, start)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])

    async def act(path: str, body: dict[str, Any] | None = None, **headers: str) -> None:
        response = await client.post(
            f"/v1/appointments/{path}", json=body or {}, headers={**admin.headers, **headers}
        )
        assert response.status_code == 200, response.text

    await act(f"{ids[0]}/cancel", {"reason": "ill"})
    await act(f"{ids[1]}/complete")
    await act(f"{ids[2]}/no-show")
    await act(f"{ids[3]}/check-in")
    # Moved to the next local day: the old day loses it, the new one gains it.
    moved_to = local_instant(day + timedelta(days=1), time(10, 0), zone)
    await act(
        f"{ids[4]}/reschedule", {"start": moved_to.isoformat()}, **{"Idempotency-Key": "mv-1"}
    )
    # Changes to the random visits too (in the past: not time-gated), in other zones.
    async with database.reading(primary=True) as session:
        active = (
            await session.execute(
                text(
                    "SELECT id, status FROM appointments WHERE clinic_id = ANY(:c) "
                    "AND status IN ('booked', 'checked_in') ORDER BY id LIMIT 6"
                ),
                {"c": list(clinics.clinic_ids)},
            )
        ).all()
    for n, (appointment_id, status) in enumerate(active):
        action = ["complete", "no-show", "cancel"][n % 3]
        if action == "cancel" and status != "booked":
            action = "complete"
        await act(f"{appointment_id}/{action}", {"reason": "x"} if action == "cancel" else None)

    await _relay_and_work(settings, database, queue)
    first, last = YEAR_START - timedelta(days=10), day + timedelta(days=5)
    await _assert_exact(client, database, admin.headers, first, last)
    live = (await report(client, admin.headers, day, day))[clinic_id]
    # Six booked that day, one moved away; one each cancelled, completed, no-show.
    assert (live["booked"], live["cancelled"], live["completed"], live["no_show"]) == (5, 1, 1, 1)
    assert live["no_show_rate"] == 0.5
    moved_day = (await report(client, admin.headers, moved_to.date(), moved_to.date()))[clinic_id]
    assert moved_day["booked"] == 1
    # A move alone (no other event on either day): its own event updates both days.
    later = local_instant(day + timedelta(days=2), time(11, 0), zone)
    await act(f"{ids[5]}/reschedule", {"start": later.isoformat()}, **{"Idempotency-Key": "mv-2"})
    await _relay_and_work(settings, database, queue)
    assert (await report(client, admin.headers, day, day))[clinic_id]["booked"] == 4
    assert (await report(client, admin.headers, later.date(), later.date()))[clinic_id][
        "booked"
    ] == 1
    await _assert_exact(client, database, admin.headers, first, last)

    # At least once, and in any order: handling every event again, twice and backwards,
    # changes nothing.
    events = await _analytics_events(database)
    assert {e.topic for e in events} >= {
        "appointment.booked",
        "appointment.cancelled",
        "appointment.completed",
        "appointment.no_show",
        "appointment.rescheduled",
    }
    ctx = {"database": database}
    before = await report(client, admin.headers, first, last)
    for event in [*reversed(events), *events]:
        await refresh_clinic_stats(ctx, event)
    assert await report(client, admin.headers, first, last) == before
    # Concurrently, too: the per-day locks serialise writers of a row without deadlocking.
    await asyncio.gather(*(refresh_clinic_stats(ctx, event) for event in events * 2))
    assert await report(client, admin.headers, first, last) == before
    # And while a rebuild replaces the same rows (the rebuild lock orders them).
    await asyncio.gather(
        rebuild_stats(database, first, last), *(refresh_clinic_stats(ctx, e) for e in events)
    )
    assert await report(client, admin.headers, first, last) == before


async def test_a_rebuild_repairs_drift_and_a_partial_one_stays_in_its_range(
    client: httpx.AsyncClient, database: Database, accounts: Accounts
) -> None:
    rng = random.Random(99)
    clinics = await seed_random_visits(database, rng, per_provider=40)
    await rebuild_stats(database)
    headers = await _admin_headers(accounts)
    clinic_id = next(iter(clinics.clinic_ids))
    inside, outside = date(2026, 3, 15), date(2026, 8, 15)
    far = date(2031, 1, 1)  # no visits there at all
    async with database.unit_of_work() as session:
        for day in (inside, outside, far):
            await session.execute(
                text(
                    "INSERT INTO clinic_daily_stats (clinic_id, day, booked) VALUES (:c, :d, 77) "
                    "ON CONFLICT (clinic_id, day) DO UPDATE SET booked = 77"
                ),
                {"c": clinic_id, "d": day},
            )

    async def booked_on(day: date) -> int:
        booked: int = (await report(client, headers, day, day))[clinic_id]["booked"]
        return booked

    partial = await rebuild_stats(database, date(2026, 3, 1), date(2026, 4, 10))
    assert partial.chunks == 2  # March, then April 1-10
    assert await booked_on(inside) == (await group_by(database, inside, inside))[clinic_id][0]
    assert await booked_on(outside) == 77

    await rebuild_stats(database)
    assert await booked_on(outside) == (await group_by(database, outside, outside))[clinic_id][0]
    assert await booked_on(far) == 0
    await _assert_exact(client, database, headers, YEAR_START, YEAR_END)


async def test_rebuild_of_an_empty_database_does_nothing(database: Database) -> None:
    summary = await rebuild_stats(database)
    assert (summary.chunks, summary.rows) == (0, 0)


def test_month_chunks_cover_the_range_exactly() -> None:
    chunks = service.month_chunks(date(2026, 1, 31), date(2026, 3, 1))
    assert chunks == [
        (date(2026, 1, 31), date(2026, 1, 31)),
        (date(2026, 2, 1), date(2026, 2, 28)),
        (date(2026, 3, 1), date(2026, 3, 1)),
    ]
    assert service.month_chunks(date(2026, 5, 2), date(2026, 5, 1)) == []
    year = service.month_chunks(date(2028, 1, 1), date(2028, 12, 31))
    assert len(year) == 12
    assert sum((b - a).days + 1 for a, b in year) == 366


async def test_the_nightly_cron_rebuilds_everything(settings: Settings, database: Database) -> None:
    crons = {job.name: job for job in worker_options(settings)["cron_jobs"]}
    nightly = crons["cron:rebuild_clinic_stats"]
    assert (nightly.hour, nightly.minute) == ({2}, {41})
    assert nightly.timeout_s == REBUILD_TIMEOUT_SECONDS  # beyond the 60 s default of jobs

    clinics = await seed_random_visits(database, random.Random(5), per_provider=10)
    result = await rebuild_clinic_stats({"database": database})
    assert result["rows"] > 0
    first, last = YEAR_START - timedelta(days=10), YEAR_END + timedelta(days=10)
    expected = await group_by(database, first, last)
    async with database.reading(primary=True) as session:
        rows = await session.execute(
            text(
                "SELECT clinic_id, sum(booked), sum(completed), sum(cancelled), sum(no_show) "
                "FROM clinic_daily_stats GROUP BY clinic_id"
            )
        )
        built = {row[0]: tuple(int(v) for v in row[1:]) for row in rows}
    assert built == {clinic: expected[clinic] for clinic in clinics.clinic_ids}
