"""`carebook seed --scale N`: the benchmark dataset generator, loaded with COPY.

A small dataset (3,000 appointments) is seeded into databases of this module's own: the counts
follow the plan, both exclusion constraints are rebuilt exactly as the migration defines them
and hold, every appointment lies on its provider's slot grid (checked in SQL for every row and
against the application's own slot statement), the same seed gives identical rows, and a
second run is refused.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import pool, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.availability import repository as availability_repository
from app.availability.repository import Window
from app.kit.db import violated_constraint
from app.kit.security import Passwords
from app.seed.errors import SeedError
from app.seed.scale import (
    ADMIN_EMAIL,
    LOAD_PASSWORD,
    SPECIALTIES,
    ScalePlan,
    ScaleSummary,
    seed_scale,
    slot_grid,
)
from app.settings import Settings
from tests.fixtures.app import client_for, make_settings, running_app

if TYPE_CHECKING:
    from tests.fixtures.servers import TestServers
from tests.fixtures.servers import fresh_database as shared_fresh_database

N = 3_000
SEED = 7
TODAY = datetime.now(UTC).date()
CAREBOOK = Path(sys.executable).parent / "carebook"

_DEFINITIONS = """
SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'appointments'::regclass
UNION ALL
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'appointments'::regclass
"""


def fresh_database(servers: TestServers) -> AbstractAsyncContextManager[str]:
    return shared_fresh_database(servers, "carebook_scale", migrate=True)


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list(await connection.execute(text(sql), params))


async def _scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return await connection.scalar(text(sql), params)


async def _definitions(engine: AsyncEngine) -> dict[str, str]:
    return {row.name: row.definition for row in await _rows(engine, _DEFINITIONS)}


# md5 over every column of every row, in a fixed order: equal digests, identical tables.
async def _digest(engine: AsyncEngine, table: str) -> str:
    value = await _scalar(
        engine, f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t"
    )
    return str(value)


@dataclass(frozen=True)
class Seeded:
    url: str
    engine: AsyncEngine
    settings: Settings
    summary: ScaleSummary
    definitions_before: dict[str, str]


@pytest.fixture(scope="module")
async def seeded(test_servers: TestServers) -> AsyncIterator[Seeded]:
    async with fresh_database(test_servers) as url:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        try:
            before = await _definitions(engine)
            settings = make_settings(url, test_servers.redis_url)
            summary = await seed_scale(settings, N, random_seed=SEED, today=TODAY)
            yield Seeded(url, engine, settings, summary, before)
        finally:
            await engine.dispose()


async def _seeded_digests(servers: TestServers, seed: int) -> dict[str, str]:
    async with fresh_database(servers) as url:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        try:
            settings = make_settings(url, servers.redis_url)
            await seed_scale(settings, N, random_seed=seed, today=TODAY)
            return {t: await _digest(engine, t) for t in _TABLES}
        finally:
            await engine.dispose()


_TABLES = ("appointments", "users", "providers", "schedule_rules", "clinics", "specialties")


async def test_counts_follow_the_plan(seeded: Seeded) -> None:
    plan = ScalePlan.of(N)
    assert (plan.clinics, plan.providers_per_clinic, plan.patients) == (2, 20, N // 10)
    engine = seeded.engine
    assert await _scalar(engine, "SELECT count(*) FROM appointments") == N
    assert await _scalar(engine, "SELECT count(*) FROM clinics") == 2
    assert await _scalar(engine, "SELECT count(*) FROM specialties") == len(SPECIALTIES) == 8
    per_clinic = await _rows(engine, "SELECT clinic_id, count(*) FROM providers GROUP BY 1")
    assert sorted(count for _, count in per_clinic) == [20, 20]
    roles = dict(await _rows(engine, "SELECT role, count(*) FROM users GROUP BY 1"))
    assert roles == {"admin": 1, "staff": 2, "provider": 40, "patient": N // 10}
    staff_clinics = await _scalar(
        engine, "SELECT count(DISTINCT clinic_id) FROM users WHERE role = 'staff'"
    )
    assert staff_clinics == 2
    assert (
        await _scalar(
            engine,
            "SELECT count(*) FROM providers p WHERE NOT EXISTS "
            "(SELECT 1 FROM schedule_rules r WHERE r.provider_id = p.user_id)",
        )
        == 0
    )
    zones = {z for (z,) in await _rows(engine, "SELECT DISTINCT timezone FROM providers")}
    assert len(zones) >= 2
    summary = seeded.summary
    assert (summary.appointments, summary.providers, summary.patients) == (N, 40, N // 10)
    # Every appointment has its clinic's provider, and every key matches its id.
    assert (
        await _scalar(
            engine,
            "SELECT count(*) FROM appointments a JOIN providers p ON p.user_id = a.provider_id "
            "JOIN users u ON u.id = a.patient_id "
            "WHERE a.clinic_id <> p.clinic_id OR a.provider_key <> p.key OR a.patient_key <> u.key "
            "OR u.role <> 'patient'",
        )
        == 0
    )


async def test_history_and_statuses_look_real(seeded: Seeded) -> None:
    anchor = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC)
    rows = await _rows(
        seeded.engine,
        "SELECT starts_at < :anchor AS past, status, video_status, count(*) AS n "
        "FROM appointments GROUP BY 1, 2, 3",
        anchor=anchor,
    )
    past = {r.status: r.n for r in rows if r.past}
    future = {r.status: r.n for r in rows if not r.past}
    assert {r.video_status for r in rows if r.past} == {"ready"}
    assert {r.video_status for r in rows if not r.past} == {"pending"}
    assert set(past) == {"completed", "cancelled", "no_show"}
    assert set(future) <= {"booked", "cancelled"}
    assert future.get("booked", 0) > 0
    total_past = sum(past.values())
    assert 0.07 < past["cancelled"] / total_past < 0.13
    assert 0.03 < past["no_show"] / total_past < 0.07
    assert past["completed"] / total_past > 0.8
    assert future["booked"] / sum(future.values()) > 0.75
    first, last = (
        await _rows(seeded.engine, "SELECT min(starts_at), max(ends_at) FROM appointments")
    )[0]
    assert anchor - timedelta(days=731) <= first < anchor - timedelta(days=700)
    assert anchor + timedelta(days=50) < last <= anchor + timedelta(days=81)
    assert (
        await _scalar(
            seeded.engine,
            "SELECT count(*) FROM appointments WHERE created_at > updated_at "
            "OR created_at > :now OR (status = 'cancelled') <> (cancel_reason IS NOT NULL)",
            now=datetime.now(UTC),
        )
        == 0
    )


async def test_indexes_and_constraints_are_rebuilt_exactly_and_hold(seeded: Seeded) -> None:
    engine = seeded.engine
    after = await _definitions(engine)
    assert after == seeded.definitions_before
    assert {"ex_appointments_provider_overlap", "ex_appointments_patient_overlap"} <= set(after)
    # No two appointments of one provider overlap (active or not: no slot is used twice),
    # nor two of one patient.
    for owner in ("provider_key", "patient_key"):
        overlaps = await _scalar(
            engine,
            f"SELECT count(*) FROM appointments a JOIN appointments b "
            f"ON a.{owner} = b.{owner} AND a.id < b.id "
            f"AND tstzrange(a.starts_at, a.ends_at) && tstzrange(b.starts_at, b.ends_at)",
        )
        assert overlaps == 0, owner
    shared = await _scalar(
        engine,
        "SELECT count(*) FROM (SELECT patient_id FROM appointments GROUP BY 1 "
        "HAVING count(DISTINCT provider_id) > 1) s",
    )
    assert shared == 0
    # The rebuilt backstop still rejects a double booking.
    booked = (await _rows(engine, "SELECT * FROM appointments WHERE status = 'booked' LIMIT 1"))[0]
    other = (
        await _rows(
            engine,
            "SELECT id, key FROM users WHERE role = 'patient' AND id <> :id LIMIT 1",
            id=booked.patient_id,
        )
    )[0]
    with pytest.raises(IntegrityError) as error:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO appointments (id, provider_id, provider_key, patient_id, "
                    "patient_key, clinic_id, starts_at, ends_at) VALUES (gen_random_uuid(), "
                    ":provider_id, :provider_key, :patient_id, :patient_key, :clinic_id, "
                    ":starts_at, :ends_at)"
                ),
                {
                    "provider_id": booked.provider_id,
                    "provider_key": booked.provider_key,
                    "patient_id": other.id,
                    "patient_key": other.key,
                    "clinic_id": booked.clinic_id,
                    "starts_at": booked.starts_at,
                    "ends_at": booked.ends_at,
                },
            )
    assert violated_constraint(error.value) == "ex_appointments_provider_overlap"


async def test_every_appointment_is_on_its_providers_grid(seeded: Seeded) -> None:
    engine = seeded.engine
    # Every row, in SQL: local weekday and time inside a rule, aligned to the slot length from
    # the rule's start, the whole slot fitting before the rule's end, lasting one slot.
    off_grid = await _scalar(
        engine,
        """
        SELECT count(*) FROM appointments a
        JOIN providers p ON p.user_id = a.provider_id
        CROSS JOIN LATERAL (SELECT a.starts_at AT TIME ZONE p.timezone AS local) l
        WHERE a.ends_at - a.starts_at <> make_interval(mins => p.slot_minutes)
           OR NOT EXISTS (
               SELECT 1 FROM schedule_rules r
               WHERE r.provider_id = a.provider_id
                 AND r.weekday = EXTRACT(ISODOW FROM l.local)
                 AND l.local::time >= r.start_time
                 AND EXTRACT(EPOCH FROM l.local::time - r.start_time) + 60 * p.slot_minutes
                     <= EXTRACT(EPOCH FROM r.end_time - r.start_time)
                 AND CAST(EXTRACT(EPOCH FROM l.local::time - r.start_time) AS integer)
                     % (60 * p.slot_minutes) = 0
           )
        """,
    )
    assert off_grid == 0
    # A sample, against the application's own grid statement (the one booking uses): every
    # appointment is a slot there, the active ones take it, and no cancelled slot was reused.
    sample = await _rows(
        engine,
        "SELECT a.id, a.provider_id, a.starts_at, a.ends_at, a.status, p.timezone "
        "FROM appointments a JOIN providers p ON p.user_id = a.provider_id "
        "ORDER BY a.status = 'booked' DESC, a.id LIMIT 250",
    )
    assert any(row.status == "booked" for row in sample)
    now = datetime.now(UTC)
    sessions = async_sessionmaker(engine)
    async with sessions() as session:
        for row in sample:
            local_day = row.starts_at.astimezone(ZoneInfo(row.timezone)).date()
            window = Window(
                local_day, local_day, now + timedelta(hours=1), now + timedelta(days=90)
            )
            state = await availability_repository.slot_state(
                session, row.provider_id, row.starts_at, window
            )
            assert state is not None, row
            assert (state.starts_at, state.ends_at) == (row.starts_at, row.ends_at)
            assert state.taken == (row.status in ("booked", "checked_in")), row


async def test_the_same_seed_gives_identical_rows(
    seeded: Seeded, test_servers: TestServers
) -> None:
    first = {t: await _digest(seeded.engine, t) for t in _TABLES}
    # One after the other: Alembic's upgrades must not run concurrently in one process.
    same = await _seeded_digests(test_servers, SEED)
    other = await _seeded_digests(test_servers, SEED + 1)
    assert same == first
    assert other["appointments"] != first["appointments"]
    assert other["users"] != first["users"]


async def test_every_account_logs_in_with_the_load_password(seeded: Seeded) -> None:
    hashes = await _rows(seeded.engine, "SELECT DISTINCT password_hash FROM users")
    assert len(hashes) == 1
    assert await Passwords(seeded.settings).verify(hashes[0][0], LOAD_PASSWORD)
    patient_id = await _scalar(
        seeded.engine, "SELECT id FROM users WHERE email = 'patient000001@load.example.com'"
    )
    expected = await _scalar(
        seeded.engine, "SELECT count(*) FROM appointments WHERE patient_id = :id", id=patient_id
    )
    async with running_app(seeded.settings) as app, client_for(app) as client:
        for email in (ADMIN_EMAIL, "staff01@load.example.com", "provider0001@load.example.com"):
            response = await client.post(
                "/v1/auth/token", json={"email": email, "password": LOAD_PASSWORD}
            )
            assert response.status_code == 200, response.text
        response = await client.post(
            "/v1/auth/token",
            json={"email": "patient000001@load.example.com", "password": LOAD_PASSWORD},
        )
        assert response.status_code == 200, response.text
        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        listing = await client.get("/v1/appointments?limit=100", headers=headers)
    assert listing.status_code == 200, listing.text
    assert len(listing.json()["items"]) == min(expected, 100)


async def test_a_second_run_is_refused(seeded: Seeded) -> None:
    with pytest.raises(SeedError) as exit_info:
        await seed_scale(seeded.settings, 10, random_seed=SEED, today=TODAY)
    assert exit_info.value.exit_code == 1
    assert "already has appointments" in str(exit_info.value)

    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBOOK_")}
    env |= {"CAREBOOK_DATABASE_URL": seeded.url, "CAREBOOK_ENVIRONMENT": "development"}
    process = await asyncio.create_subprocess_exec(
        str(CAREBOOK),
        "seed",
        "--scale",
        "10",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, (stdout, stderr)
    assert b"already has appointments" in stderr
    assert b"Traceback" not in stderr
    assert await _scalar(seeded.engine, "SELECT count(*) FROM appointments") == N


@pytest.mark.parametrize("slot_minutes", [30, 45])
async def test_the_generators_grid_is_the_applications_across_dst(
    seeded: Seeded, slot_minutes: int
) -> None:
    """Night shifts across both 2026 DST changes of New York: the generator's slots are the
    application's (minus, with 45-minute slots, the one that would overlap its predecessor
    right after the spring-forward gap)."""
    zone = "America/New_York"
    rules = [(7, time(0, 0), time(4, 0)), (1, time(0, 30), time(3, 30))]
    ranges = [(date(2026, 3, 7), date(2026, 3, 9)), (date(2026, 10, 31), date(2026, 11, 2))]
    async with seeded.engine.connect() as connection:
        transaction = await connection.begin()
        try:
            clinic_id = await connection.scalar(text("SELECT id FROM clinics LIMIT 1"))
            specialty_id = await connection.scalar(text("SELECT id FROM specialties LIMIT 1"))
            user_id = await connection.scalar(
                text(
                    "INSERT INTO users (id, email, password_hash, full_name, role) VALUES "
                    "(gen_random_uuid(), 'night@example.com', 'x', 'Night Owl', 'provider') "
                    "RETURNING id"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO providers (user_id, clinic_id, specialty_id, timezone, "
                    "slot_minutes) VALUES (:u, :c, :s, :z, :m)"
                ),
                {"u": user_id, "c": clinic_id, "s": specialty_id, "z": zone, "m": slot_minutes},
            )
            for weekday, start, end in rules:
                await connection.execute(
                    text(
                        "INSERT INTO schedule_rules (id, provider_id, weekday, start_time, "
                        "end_time) VALUES (gen_random_uuid(), :u, :w, :s, :e)"
                    ),
                    {"u": user_id, "w": weekday, "s": start, "e": end},
                )
            session = AsyncSession(bind=connection)
            for first, last in ranges:
                window = Window(
                    first, last, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
                )
                rows = await availability_repository.free_slots(session, user_id, window)
                application = [int(r.starts_at.timestamp()) for r in rows]
                generated = list(slot_grid(rules, zone, slot_minutes, first, last))
                assert set(generated) <= set(application)
                missing = sorted(set(application) - set(generated))
                if slot_minutes == 30 or first.month != 3:
                    assert generated == application
                else:
                    assert len(missing) == 1  # 01:30 EST + 45 min runs past 03:00 EDT
                    previous = max(s for s in application if s < missing[0])
                    assert missing[0] < previous + slot_minutes * 60
        finally:
            await transaction.rollback()


async def test_clinic_daily_stats_are_built_from_the_loaded_visits(seeded: Seeded) -> None:
    # The analytics table equals a direct GROUP BY over the loaded appointments.
    grouped = """
        SELECT a.clinic_id, timezone(c.timezone, a.starts_at)::date AS day, count(*),
            count(*) FILTER (WHERE a.status = 'completed'),
            count(*) FILTER (WHERE a.status = 'cancelled'),
            count(*) FILTER (WHERE a.status = 'no_show')
        FROM appointments a JOIN clinics c ON c.id = a.clinic_id GROUP BY 1, 2 ORDER BY 1, 2
    """
    stats = """
        SELECT clinic_id, day, booked, completed, cancelled, no_show
        FROM clinic_daily_stats ORDER BY 1, 2
    """
    expected = [tuple(row) for row in await _rows(seeded.engine, grouped)]
    assert expected
    assert [tuple(row) for row in await _rows(seeded.engine, stats)] == expected
