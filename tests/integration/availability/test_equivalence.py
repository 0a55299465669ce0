"""Availability equals an independent brute force, across DST transitions (audit F2).

The brute force below walks the wall-clock grid in Python with `zoneinfo` (fold=0 picks the
first occurrence of an ambiguous time; a time that does not survive a round trip through UTC
lies in a gap) and checks every candidate against time off and active appointments. It shares
no code with the SQL it checks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.availability import repository
from app.availability.repository import Window
from app.kit.db import Database
from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, next_local_day

# Local dates whose span contains a DST change in each zone (2025 and 2026 transitions).
TRANSITIONS = {
    "America/New_York": [date(2025, 3, 9), date(2025, 11, 2), date(2026, 3, 8), date(2026, 11, 1)],
    "Europe/London": [date(2025, 3, 30), date(2025, 10, 26), date(2026, 3, 29), date(2026, 10, 25)],
    "Australia/Lord_Howe": [date(2025, 4, 6), date(2025, 10, 5)],  # a 30-minute shift
}
ACTIVE = ("booked", "checked_in")


@dataclass(frozen=True)
class Case:
    zone: str
    slot_minutes: int
    rules: tuple[tuple[int, time, time], ...]
    first: date
    last: date
    time_off: tuple[tuple[datetime, datetime], ...]
    appointments: tuple[tuple[datetime, datetime, str], ...]
    earliest: datetime
    latest: datetime


def brute_force(case: Case) -> list[tuple[datetime, datetime]]:
    zone = ZoneInfo(case.zone)
    step = timedelta(minutes=case.slot_minutes)
    blocked = [(s, e) for s, e in case.time_off] + [
        (s, e) for s, e, status in case.appointments if status in ACTIVE
    ]
    slots = []
    day = case.first
    while day <= case.last:
        for weekday, start, end in case.rules:
            if day.isoweekday() != weekday:
                continue
            local = datetime.combine(day, start)
            while local + step <= datetime.combine(day, end):
                instant = local.replace(tzinfo=zone, fold=0)
                survives = instant.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local
                if survives:
                    begins = instant.astimezone(UTC)
                    ends = begins + step
                    free = all(not (s < ends and e > begins) for s, e in blocked)
                    if free and case.earliest <= begins < case.latest:
                        slots.append((begins, ends))
                local += step
        day += timedelta(days=1)
    return sorted(slots)


def _rules() -> st.SearchStrategy[tuple[tuple[int, time, time], ...]]:
    # Starts cluster in the small hours, where the gaps and folds are.
    minute = st.integers(min_value=0, max_value=23 * 60 + 30).map(lambda m: m - m % 5)
    rule = st.tuples(
        st.integers(min_value=1, max_value=7),
        st.one_of(st.integers(min_value=0, max_value=240).map(lambda m: m - m % 15), minute),
        st.integers(min_value=15, max_value=6 * 60),
    )

    def build(raw: list[tuple[int, int, int]]) -> tuple[tuple[int, time, time], ...]:
        rules: list[tuple[int, time, time]] = []
        for weekday, start_min, length in raw:
            end_min = min(start_min + length, 23 * 60 + 59)
            if end_min <= start_min:
                continue
            if any(
                w == weekday
                and start_min < e.hour * 60 + e.minute
                and s.hour * 60 + s.minute < end_min
                for w, s, e in rules
            ):
                continue  # the API refuses overlapping rules, so the SQL may assume none
            rules.append(
                (weekday, time(start_min // 60, start_min % 60), time(end_min // 60, end_min % 60))
            )
        return tuple(rules)

    return st.lists(rule, min_size=1, max_size=6).map(build).filter(bool)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    zone = draw(st.sampled_from(sorted(TRANSITIONS)))
    transition = draw(st.sampled_from(TRANSITIONS[zone]))
    first = transition - timedelta(days=draw(st.integers(min_value=0, max_value=3)))
    last = first + timedelta(days=draw(st.integers(min_value=0, max_value=6)))
    slot_minutes = draw(st.sampled_from([10, 15, 20, 30, 45, 50, 60, 90]))
    span_start = datetime.combine(first, time(0), tzinfo=UTC) - timedelta(hours=14)
    span_hours = ((last - first).days + 2) * 24 + 14

    def interval(start_min: int, length: int) -> tuple[datetime, datetime]:
        begins = span_start + timedelta(minutes=start_min)
        return begins, begins + timedelta(minutes=length)

    raw_off = draw(
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=span_hours * 60),
                st.integers(min_value=5, max_value=12 * 60),
            ),
            max_size=3,
        )
    )
    # Appointments may not overlap each other (one patient, one provider): lay them end to end.
    raw_appointments = draw(
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=600),
                st.integers(min_value=5, max_value=120),
                st.sampled_from(["booked", "checked_in", "cancelled", "completed", "no_show"]),
            ),
            max_size=8,
        )
    )
    appointments = []
    cursor = draw(st.integers(min_value=0, max_value=24 * 60))
    for gap, length, status in raw_appointments:
        begins, ends = interval(cursor + gap, length)
        appointments.append((begins, ends, status))
        cursor += gap + length
    window_start = span_start + timedelta(minutes=draw(st.integers(0, span_hours * 60)))
    window_length = timedelta(minutes=draw(st.integers(0, span_hours * 60)))
    earliest = draw(st.sampled_from([span_start - timedelta(days=1), window_start]))
    latest = draw(st.sampled_from([span_start + timedelta(days=30), window_start + window_length]))
    return Case(
        zone=zone,
        slot_minutes=slot_minutes,
        rules=draw(_rules()),
        first=first,
        last=last,
        time_off=tuple(interval(s, n) for s, n in raw_off),
        appointments=tuple(appointments),
        earliest=earliest,
        latest=latest,
    )


async def _arrange(
    database: Database, booking: Booking, accounts: Accounts, case: Case
) -> uuid.UUID:
    provider = await booking.provider(
        timezone=case.zone, slot_minutes=case.slot_minutes, rules=case.rules
    )
    patient = await accounts.create(Role.PATIENT)
    async with database.unit_of_work() as session:
        keys = (
            await session.execute(
                text(
                    "SELECT (SELECT key FROM providers WHERE user_id = :p) AS pk, "
                    "(SELECT key FROM users WHERE id = :u) AS uk"
                ),
                {"p": provider.id, "u": patient.id},
            )
        ).one()
        for starts_at, ends_at in case.time_off:
            await session.execute(
                text(
                    "INSERT INTO time_off (id, provider_id, starts_at, ends_at) "
                    "VALUES (gen_random_uuid(), :p, :s, :e)"
                ),
                {"p": provider.id, "s": starts_at, "e": ends_at},
            )
        for starts_at, ends_at, status in case.appointments:
            await session.execute(
                text(
                    "INSERT INTO appointments (id, provider_id, provider_key, patient_id, "
                    "patient_key, clinic_id, starts_at, ends_at, status) "
                    "VALUES (gen_random_uuid(), :p, :pk, :u, :uk, :c, :s, :e, :status)"
                ),
                {
                    "p": provider.id,
                    "pk": keys.pk,
                    "u": patient.id,
                    "uk": keys.uk,
                    "c": provider.clinic_id,
                    "s": starts_at,
                    "e": ends_at,
                    "status": status,
                },
            )
    return provider.id


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
async def test_sql_availability_equals_brute_force(
    case: Case, database: Database, booking: Booking, accounts: Accounts
) -> None:
    provider_id = await _arrange(database, booking, accounts, case)
    window = Window(
        from_date=case.first, to_date=case.last, earliest=case.earliest, latest=case.latest
    )
    async with database.reading(primary=True) as session:
        rows = await repository.free_slots(session, provider_id, window)
    computed = [(r.starts_at, r.ends_at) for r in rows if r.starts_at is not None]
    assert computed == brute_force(case)


async def test_fold_gives_first_occurrence_and_gap_gives_nothing(
    database: Database, booking: Booking, accounts: Accounts
) -> None:
    """Hand-checked: New York, 2026-11-01 (fold at 01:00-02:00) and 2026-03-08 (gap 02:00-03:00)."""
    provider = await booking.provider(
        timezone="America/New_York",
        slot_minutes=30,
        rules=[(7, time(0, 30), time(3, 30))],  # Sundays
    )
    window = Window(
        from_date=date(2026, 3, 8),
        to_date=date(2026, 3, 8),
        earliest=datetime(2000, 1, 1, tzinfo=UTC),
        latest=datetime(2100, 1, 1, tzinfo=UTC),
    )
    async with database.reading(primary=True) as session:
        spring = await repository.free_slots(session, provider.id, window)
        autumn = await repository.free_slots(
            session,
            provider.id,
            Window(date(2026, 11, 1), date(2026, 11, 1), window.earliest, window.latest),
        )
    zone = ZoneInfo("America/New_York")
    spring_local = [r.starts_at.astimezone(zone).strftime("%H:%M") for r in spring]
    # 02:00 and 02:30 do not exist on that day.
    assert spring_local == ["00:30", "01:00", "01:30", "03:00"]
    autumn_utc = [r.starts_at.astimezone(UTC).strftime("%H:%M") for r in autumn]
    # 01:00 and 01:30 happen twice; the first occurrence (EDT, UTC-4) is the slot.
    assert autumn_utc == ["04:30", "05:00", "05:30", "07:00", "07:30", "08:00"]
    # A slot lasts its length in real time, even across the fold.
    assert all(r.ends_at - r.starts_at == timedelta(minutes=30) for r in autumn)


# Offsets from UTC+14 to UTC-10, never more than 5.5 hours apart: one of them is always
# within about 3 hours of noon, so "today" has slots left after the minimum notice whatever
# the hour the suite runs at.
_ZONES_AROUND_THE_CLOCK = (
    "Pacific/Kiritimati",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Pacific/Honolulu",
)


def _zone_near_local_noon() -> str:
    def hours_from_noon(zone: str) -> float:
        local = datetime.now(UTC).astimezone(ZoneInfo(zone))
        return abs(local.hour + local.minute / 60 - 12)

    return min(_ZONES_AROUND_THE_CLOCK, key=hours_from_noon)


async def test_http_availability_hides_past_notice_and_horizon(
    client: httpx.AsyncClient, booking: Booking
) -> None:
    zone = _zone_near_local_noon()
    provider = await booking.provider(
        timezone=zone, rules=[(day, time(0, 0), time(23, 30)) for day in range(1, 8)]
    )
    today = datetime.now(UTC).astimezone(ZoneInfo(zone)).date()
    response = await client.get(
        f"/v1/providers/{provider.id}/availability",
        params={"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()},
    )
    assert response.status_code == 200
    now = datetime.now(UTC)
    starts = [datetime.fromisoformat(s["start"]) for s in response.json()["slots"]]
    assert starts, "today has slots after the minimum notice: it is near noon there"
    assert all(start >= now + timedelta(minutes=60) - timedelta(seconds=5) for start in starts)

    far = today + timedelta(days=95)
    beyond = await client.get(
        f"/v1/providers/{provider.id}/availability",
        params={"from": (far - timedelta(days=10)).isoformat(), "to": far.isoformat()},
    )
    latest = max(datetime.fromisoformat(s["start"]) for s in beyond.json()["slots"])
    assert latest < now + timedelta(days=90)


async def test_range_limits(client: httpx.AsyncClient, booking: Booking) -> None:
    provider = await booking.provider()
    day = next_local_day(provider.timezone)
    url = f"/v1/providers/{provider.id}/availability"
    ok = await client.get(
        url, params={"from": day.isoformat(), "to": (day + timedelta(days=30)).isoformat()}
    )
    assert ok.status_code == 200
    too_large = await client.get(
        url, params={"from": day.isoformat(), "to": (day + timedelta(days=31)).isoformat()}
    )
    assert too_large.status_code == 422
    assert too_large.json()["code"] == "range_too_large"
    backwards = await client.get(
        url, params={"from": day.isoformat(), "to": (day - timedelta(days=1)).isoformat()}
    )
    assert backwards.status_code == 422
    assert backwards.json()["code"] == "validation_error"
    for bad in ({"from": "tomorrow", "to": day.isoformat()}, {"to": day.isoformat()}):
        response = await client.get(url, params=bad)
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
    missing = await client.get(
        f"/v1/providers/{uuid.uuid4()}/availability",
        params={"from": day.isoformat(), "to": day.isoformat()},
    )
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    search = await client.get("/v1/availability", params={"date": day.isoformat(), "days": 8})
    assert search.status_code == 422
    assert search.json()["code"] == "range_too_large"


async def test_dates_at_the_ends_of_the_calendar_are_empty_not_errors(
    client: httpx.AsyncClient, booking: Booking
) -> None:
    # asyncpg sends 0001-01-01 and 9999-12-31 as -infinity and infinity: they must never reach
    # the date arithmetic (found by the API fuzzer).
    provider = await booking.provider()
    url = f"/v1/providers/{provider.id}/availability"
    for first, last in (("0001-01-01", "0001-01-01"), ("9999-12-01", "9999-12-31")):
        response = await client.get(url, params={"from": first, "to": last})
        assert response.status_code == 200, response.text
        assert response.json()["slots"] == []
    search = await client.get("/v1/availability", params={"date": "9999-12-31", "days": 7})
    assert search.status_code == 200, search.text
    assert all(item["slots"] == [] for item in search.json()["items"])
