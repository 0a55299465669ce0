"""Random visits across awkward time zones, and the figures computed straight from them.

The oracle is a direct GROUP BY over `appointments` written here, independently of the
application's statements, and cross-checked against Python's own zone arithmetic (zoneinfo),
so a mistake in how the application turns instants into local dates cannot hide in both.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import text

from app.kit.db import Database

# Zones chosen for their edges: +14 and -11, half- and quarter-hour offsets, a 30-minute DST
# shift, DST changes at local midnight (Havana, Santiago) and on the far side of the date line.
ZONES = (
    "Europe/London",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Auckland",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "America/Havana",
    "America/Santiago",
    "Australia/Lord_Howe",
)
STATUSES = ("booked", "checked_in", "completed", "cancelled", "no_show")
STATUS_WEIGHTS = (3, 1, 5, 2, 2)
YEAR_START = date(2026, 1, 1)
YEAR_END = date(2026, 12, 31)
SLOT = timedelta(minutes=15)

Figures = tuple[int, int, int, int]  # booked, completed, cancelled, no_show


@dataclass
class RandomClinics:
    clinic_ids: dict[uuid.UUID, str] = field(default_factory=dict)  # id -> zone
    # Per clinic, the local dates where its UTC offset changes (DST), for range edges.
    transitions: dict[uuid.UUID, list[date]] = field(default_factory=dict)


def transition_days(zone: str, first: date = YEAR_START, last: date = YEAR_END) -> list[date]:
    tz = ZoneInfo(zone)
    days = []
    day = first
    while day < last:
        today = datetime.combine(day, time(12), tzinfo=tz).utcoffset()
        tomorrow = datetime.combine(day + timedelta(days=1), time(12), tzinfo=tz).utcoffset()
        if today != tomorrow:
            days.append(day + timedelta(days=1))
        day += timedelta(days=1)
    return days


def _on_grid(instant: datetime) -> datetime:
    utc = instant.astimezone(UTC)
    return utc - timedelta(minutes=utc.minute % 15, seconds=utc.second)


def _instants(rng: random.Random, zone: str, count: int) -> list[datetime]:
    """Distinct starts on a 15-minute UTC grid: a third within an hour of a local midnight on
    DST-change days and their neighbours, the rest anywhere in the year (and a little beyond)."""
    tz = ZoneInfo(zone)
    edges = [*transition_days(zone), YEAR_START, YEAR_END, date(2026, 6, 30), date(2026, 7, 1)]
    chosen: set[datetime] = set()
    while len(chosen) < count // 3:
        day = rng.choice(edges) + timedelta(days=rng.choice((-1, 0, 1)))
        midnight = datetime.combine(day, time(0), tzinfo=tz)
        chosen.add(_on_grid(midnight + SLOT * rng.randint(-4, 4)))
    span_slots = int((timedelta(days=380)) / SLOT)
    origin = datetime.combine(YEAR_START - timedelta(days=7), time(0), tzinfo=UTC)
    while len(chosen) < count:
        chosen.add(origin + SLOT * rng.randrange(span_slots))
    return sorted(chosen)


async def seed_random_visits(
    database: Database, rng: random.Random, *, per_provider: int, providers_per_clinic: int = 2
) -> RandomClinics:
    """Clinics in `ZONES`, providers with one patient each, and visits with random statuses,
    inserted directly (no events: a rebuild or the tests' own refresh builds the stats)."""
    result = RandomClinics()
    async with database.unit_of_work() as session:
        specialty_id = uuid.uuid4()
        await session.execute(
            text("INSERT INTO specialties (id, name) VALUES (:id, :name)"),
            {"id": specialty_id, "name": f"Analytics {specialty_id.hex[:6]}"},
        )
        visits: list[dict[str, Any]] = []
        for n, zone in enumerate(ZONES):
            clinic_id = uuid.uuid4()
            await session.execute(
                text("INSERT INTO clinics (id, name, timezone) VALUES (:id, :name, :tz)"),
                {"id": clinic_id, "name": f"Random {n:02d} {zone}", "tz": zone},
            )
            result.clinic_ids[clinic_id] = zone
            result.transitions[clinic_id] = transition_days(zone)
            for _ in range(providers_per_clinic):
                provider_id, provider_key = await _user(session, "provider")
                patient_id, patient_key = await _user(session, "patient")
                provider_key = await session.scalar(
                    text(
                        "INSERT INTO providers (user_id, clinic_id, specialty_id, timezone, "
                        "slot_minutes) VALUES (:id, :clinic, :specialty, :tz, 15) RETURNING key"
                    ),
                    {"id": provider_id, "clinic": clinic_id, "specialty": specialty_id, "tz": zone},
                )
                for start in _instants(rng, zone, per_provider):
                    visits.append(
                        {
                            "provider_id": provider_id,
                            "provider_key": provider_key,
                            "patient_id": patient_id,
                            "patient_key": patient_key,
                            "clinic_id": clinic_id,
                            "starts_at": start,
                            "status": rng.choices(STATUSES, STATUS_WEIGHTS)[0],
                        }
                    )
        await session.execute(
            text(
                """
                INSERT INTO appointments (id, provider_id, provider_key, patient_id, patient_key,
                    clinic_id, starts_at, ends_at, status, video_status)
                SELECT gen_random_uuid(), v.provider_id, v.provider_key, v.patient_id,
                    v.patient_key, v.clinic_id, v.starts_at, v.starts_at + interval '15 minutes',
                    v.status, 'not_required'
                FROM unnest(CAST(:provider_ids AS uuid[]), CAST(:provider_keys AS bigint[]),
                    CAST(:patient_ids AS uuid[]), CAST(:patient_keys AS bigint[]),
                    CAST(:clinic_ids AS uuid[]), CAST(:starts AS timestamptz[]),
                    CAST(:statuses AS text[]))
                    AS v(provider_id, provider_key, patient_id, patient_key, clinic_id,
                         starts_at, status)
                """
            ),
            {
                "provider_ids": [v["provider_id"] for v in visits],
                "provider_keys": [v["provider_key"] for v in visits],
                "patient_ids": [v["patient_id"] for v in visits],
                "patient_keys": [v["patient_key"] for v in visits],
                "clinic_ids": [v["clinic_id"] for v in visits],
                "starts": [v["starts_at"] for v in visits],
                "statuses": [v["status"] for v in visits],
            },
        )
    return result


async def _user(session: Any, role: str) -> tuple[uuid.UUID, int]:
    user_id = uuid.uuid4()
    key = await session.scalar(
        text(
            "INSERT INTO users (id, email, password_hash, full_name, role) "
            "VALUES (:id, :email, 'not-a-login', 'Random Person', :role) RETURNING key"
        ),
        {"id": user_id, "email": f"{role}-{user_id.hex}@example.com", "role": role},
    )
    return user_id, int(key)


async def group_by(database: Database, first: date, last: date) -> dict[uuid.UUID, Figures]:
    """The figures straight from `appointments`, for every clinic (zeros included)."""
    async with database.reading(primary=True) as session:
        rows = await session.execute(
            text(
                """
                SELECT c.id,
                    count(a.id),
                    count(a.id) FILTER (WHERE a.status = 'completed'),
                    count(a.id) FILTER (WHERE a.status = 'cancelled'),
                    count(a.id) FILTER (WHERE a.status = 'no_show')
                FROM clinics c
                LEFT JOIN appointments a ON a.clinic_id = c.id
                    AND timezone(c.timezone, a.starts_at)::date BETWEEN :first AND :last
                GROUP BY c.id
                """
            ),
            {"first": first, "last": last},
        )
        return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}


async def zoneinfo_figures(database: Database, first: date, last: date) -> dict[uuid.UUID, Figures]:
    """The same figures with the local dates worked out by Python's zoneinfo."""
    async with database.reading(primary=True) as session:
        clinics: dict[uuid.UUID, str] = {
            row.id: row.timezone
            for row in await session.execute(text("SELECT id, timezone FROM clinics"))
        }
        rows = (
            await session.execute(text("SELECT clinic_id, starts_at, status FROM appointments"))
        ).all()
    counts: dict[uuid.UUID, Counter[str]] = {clinic: Counter() for clinic in clinics}
    for clinic_id, starts_at, status in rows:
        if first <= starts_at.astimezone(ZoneInfo(clinics[clinic_id])).date() <= last:
            counts[clinic_id]["every visit"] += 1
            counts[clinic_id][status] += 1
    return {
        clinic: (c["every visit"], c["completed"], c["cancelled"], c["no_show"])
        for clinic, c in counts.items()
    }


def rate(figures: Figures) -> float | None:
    _, completed, _, no_show = figures
    return no_show / (completed + no_show) if completed + no_show else None


async def report(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    first: date,
    last: date,
    *,
    limit: int = 100,
) -> dict[uuid.UUID, dict[str, Any]]:
    """Every page of the endpoint's answer, by clinic id (bounded: at most 50 pages)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(50):
        params: dict[str, Any] = {"from": first.isoformat(), "to": last.isoformat()}
        params["limit"] = limit
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/v1/analytics/clinics", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["from"], body["to"]) == (first.isoformat(), last.isoformat())
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    else:
        raise AssertionError("more pages than any test makes")
    names = [item["clinic_name"] for item in items]
    assert names == sorted(names)
    return {uuid.UUID(item["clinic_id"]): item for item in items}


def assert_matches(
    answered: dict[uuid.UUID, dict[str, Any]], expected: dict[uuid.UUID, Figures]
) -> None:
    assert answered.keys() == expected.keys()
    for clinic_id, figures in expected.items():
        item = answered[clinic_id]
        got = (item["booked"], item["completed"], item["cancelled"], item["no_show"])
        assert got == figures, (item["clinic_name"], got, figures)
        assert item["no_show_rate"] == rate(figures)


def interesting_ranges(clinics: RandomClinics, rng: random.Random) -> Sequence[tuple[date, date]]:
    """The whole year, single DST-change days, ranges that start or end on one, random ones."""
    ranges = [(YEAR_START, YEAR_END), (YEAR_START - timedelta(days=10), YEAR_START)]
    for days in clinics.transitions.values():
        for day in days:
            ranges.append((day, day))
            ranges.append((day - timedelta(days=rng.randint(0, 40)), day))
            ranges.append((day, day + timedelta(days=rng.randint(0, 40))))
    for _ in range(5):
        first = YEAR_START + timedelta(days=rng.randint(0, 364))
        ranges.append((first, first + timedelta(days=rng.randint(0, 60))))
    return ranges
