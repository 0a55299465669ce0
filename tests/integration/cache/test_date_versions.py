"""Availability is versioned per provider and local date (issue 13): a change invalidates only
the cached windows holding a date it touches, and a hit costs one Redis round trip.

The clock minute is part of every availability key, so each test pins `BookingRules.now` to
one minute: a hit then depends only on the versions, never on how fast the machine is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio.connection import AbstractConnection

from app.availability.rules import BookingRules
from app.kit.cache import Cache
from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, ProviderSetup, local_instant, next_local_day
from tests.fixtures.cache import CacheCounts


@pytest.fixture(autouse=True)
def pinned_minute(monkeypatch: pytest.MonkeyPatch) -> datetime:
    now = BookingRules.now()
    monkeypatch.setattr(BookingRules, "now", staticmethod(lambda: now))
    return now


def _monday_after(day: date, weeks: int = 1) -> date:
    """The Monday that starts the `weeks`-th week after the one holding `day`."""
    return day - timedelta(days=day.weekday()) + timedelta(weeks=weeks)


@dataclass
class Reader:
    client: httpx.AsyncClient
    cache: Cache
    provider: ProviderSetup

    async def read(self, first: date, last: date) -> tuple[bool, list[str]]:
        """(whether the read was a cache hit, the slot starts)."""
        counts = CacheCounts()
        before = counts.hits.get("availability", 0)
        response = await self.client.get(
            f"/v1/providers/{self.provider.id}/availability",
            params={"from": first.isoformat(), "to": last.isoformat()},
        )
        assert response.status_code == 200, response.text
        hit = counts.hits.get("availability", 0) == before + 1
        return hit, [slot["start"] for slot in response.json()["slots"]]

    async def warm(self, first: date, last: date) -> list[str]:
        await self.read(first, last)
        hit, starts = await self.read(first, last)
        assert hit, "a second read within the pinned minute was not a cache hit"
        return starts


async def _reader(app: FastAPI, client: httpx.AsyncClient, provider: ProviderSetup) -> Reader:
    return Reader(client, app.state.cache, provider)


async def test_a_booking_invalidates_only_the_windows_holding_its_date(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider(slot_minutes=60)
    patient = await accounts.create(Role.PATIENT)
    monday = _monday_after(next_local_day(provider.timezone))
    tuesday = monday + timedelta(days=1)
    at = local_instant(tuesday, time(10, 0), provider.timezone)
    reader = await _reader(app, client, provider)
    untouched = {
        "week before": (monday - timedelta(days=7), monday - timedelta(days=1)),
        # The event names no zone: the UTC date a day either side (Monday to Wednesday) is
        # bumped, and the rest of the week is not.
        "later that week": (monday + timedelta(days=3), monday + timedelta(days=6)),
        "week after": (monday + timedelta(days=7), monday + timedelta(days=13)),
    }
    touched = {
        "the day": (tuesday, tuesday),
        "its week": (monday, monday + timedelta(days=6)),
        "a month around": (monday - timedelta(days=10), monday + timedelta(days=20)),
    }
    warmed = {name: await reader.warm(*dates) for name, dates in {**untouched, **touched}.items()}
    assert all(at.isoformat() in warmed[name] for name in touched)

    assert (await booking.book(patient, provider, at)).status_code == 201

    for name, dates in untouched.items():
        assert await reader.read(*dates) == (True, warmed[name]), name
    for name, dates in touched.items():
        hit, starts = await reader.read(*dates)
        assert not hit, name
        assert starts == [s for s in warmed[name] if s != at.isoformat()], name


async def test_a_reschedule_invalidates_the_old_and_the_new_dates(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider(slot_minutes=60)
    patient = await accounts.create(Role.PATIENT)
    monday = _monday_after(next_local_day(provider.timezone))
    old = local_instant(monday + timedelta(days=2), time(10, 0), provider.timezone)
    new = local_instant(monday + timedelta(days=16), time(11, 0), provider.timezone)
    booked = await booking.book(patient, provider, old)
    assert booked.status_code == 201, booked.text
    reader = await _reader(app, client, provider)
    old_week = (monday, monday + timedelta(days=6))
    between = (monday + timedelta(days=7), monday + timedelta(days=13))
    new_week = (monday + timedelta(days=14), monday + timedelta(days=20))
    before_old, before_between, before_new = [
        await reader.warm(*dates) for dates in (old_week, between, new_week)
    ]
    assert old.isoformat() not in before_old
    assert new.isoformat() in before_new

    moved = await client.post(
        f"/v1/appointments/{booked.json()['id']}/reschedule",
        json={"start": new.isoformat()},
        headers={**patient.headers, "Idempotency-Key": booking.key()},
    )
    assert moved.status_code == 200, moved.text

    hit, starts = await reader.read(*old_week)
    assert not hit
    assert starts == sorted([*before_old, old.isoformat()])
    hit, starts = await reader.read(*new_week)
    assert not hit
    assert starts == [s for s in before_new if s != new.isoformat()]
    assert await reader.read(*between) == (True, before_between)


@pytest.mark.parametrize(
    ("zone", "utc_time", "utc_day_offset"),
    [
        # 23:30 UTC on a Sunday is 08:30 on the Monday in Tokyo (UTC+9): the next local week.
        ("Asia/Tokyo", time(23, 30), -1),
        # 00:30 UTC on a Monday is 16:30 on the Sunday before in Los Angeles: the week before.
        ("America/Los_Angeles", time(0, 30), 0),
    ],
)
async def test_a_booking_across_the_utc_date_line_invalidates_its_local_date(
    app: FastAPI,
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
    zone: str,
    utc_time: time,
    utc_day_offset: int,
) -> None:
    provider = await booking.provider(
        timezone=zone,
        slot_minutes=30,
        rules=tuple((day, time(7, 0), time(18, 0)) for day in range(1, 8)),
    )
    patient = await accounts.create(Role.PATIENT)
    monday = _monday_after(next_local_day(zone), weeks=2)
    at = datetime.combine(monday + timedelta(days=utc_day_offset), utc_time, tzinfo=UTC)
    starts_local = at.astimezone(ZoneInfo(zone))
    local_day = starts_local.date()
    assert local_day != at.date()  # the case is what it claims: another date, another week
    assert (local_day >= monday) == (zone == "Asia/Tokyo")
    reader = await _reader(app, client, provider)
    local_week = (local_day, local_day)  # in another ISO week than the UTC date
    far = (monday + timedelta(days=21), monday + timedelta(days=27))
    before_day, before_far = await reader.warm(*local_week), await reader.warm(*far)
    assert starts_local.isoformat() in before_day

    assert (await booking.book(patient, provider, at)).status_code == 201

    hit, starts = await reader.read(*local_week)
    assert not hit
    assert starts == [s for s in before_day if s != starts_local.isoformat()]
    assert await reader.read(*far) == (True, before_far)


async def test_an_event_without_dates_invalidates_the_whole_provider(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking
) -> None:
    provider = await booking.provider(slot_minutes=60)
    reader = await _reader(app, client, provider)
    monday = _monday_after(next_local_day(provider.timezone))
    windows = [(monday + timedelta(weeks=k), monday + timedelta(weeks=k, days=6)) for k in (0, 3)]
    for dates in windows:
        await reader.warm(*dates)
    cache: Cache = app.state.cache
    await cache.on_events([("appointment.cancelled", {"provider_id": str(provider.id)})])
    for dates in windows:
        assert not (await reader.read(*dates))[0]


@dataclass
class RoundTrips:
    """Every batch of commands redis-py writes to a connection: one per round trip."""

    sent: list[list[bytes]] = field(default_factory=list)

    def commands(self, *, without_pings: bool = True) -> list[list[bytes]]:
        # redis-py's health check pings a connection that idled 30 s before reusing it: upkeep
        # of the pool, not work of the request (and only on a very slow machine).
        return [c for c in self.sent if not (without_pings and c[:1] == [b"PING"])]


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    log = RoundTrips()
    original = AbstractConnection.send_packed_command

    async def send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        raw = command if isinstance(command, bytes) else b"".join(bytes(c) for c in command)
        log.sent.append([part for part in raw.split(b"\r\n") if part and part[:1] not in b"*$"])
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
    return log


async def test_a_hit_costs_one_redis_round_trip_beyond_the_rate_limiter(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, round_trips: RoundTrips
) -> None:
    provider = await booking.provider(slot_minutes=60)
    reader = await _reader(app, client, provider)
    first = next_local_day(provider.timezone)
    window = (first, first + timedelta(days=30))  # the longest window: 31 dates
    await reader.warm(*window)

    round_trips.sent.clear()
    hit, _ = await reader.read(*window)
    assert hit
    limiter_sha = app.state.rate_limiter._script.sha.encode()
    cache_sha = app.state.cache._lookup.sha.encode()
    own = [c for c in round_trips.commands() if limiter_sha not in c]
    assert len(round_trips.commands()) - len(own) == 1  # the rate limiter's check
    assert len(own) == 1, own
    # EVALSHA <sha> <number of keys>: the generation, the provider and its 31 dates.
    assert own[0][:3] == [b"EVALSHA", cache_sha, b"33"]


async def test_a_bookings_invalidation_is_one_redis_command(
    app: FastAPI, booking: Booking, accounts: Accounts, round_trips: RoundTrips
) -> None:
    provider = await booking.provider(slot_minutes=60)
    patient = await accounts.create(Role.PATIENT)
    at = local_instant(next_local_day(provider.timezone), time(10, 0), provider.timezone)

    round_trips.sent.clear()
    assert (await booking.book(patient, provider, at)).status_code == 201

    bump_sha = app.state.cache._bump_script.sha.encode()
    bumps = [c for c in round_trips.commands() if bump_sha in c]
    assert len(bumps) == 1, round_trips.commands()
    # EVALSHA <sha> 2: the provider's scope and the booking's local date (its event names
    # the provider's zone), in one call; not the profile, which a booking leaves as it was.
    assert bumps[0][:3] == [b"EVALSHA", bump_sha, b"2"], bumps
    assert not [c for c in round_trips.commands() if c[:1] in ([b"INCR"], [b"EXPIRE"])]


@pytest.mark.parametrize("with_zone", [False, True], ids=["utc-margin", "provider-zone"])
async def test_previous_range_of_an_event_is_invalidated_too(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, with_zone: bool
) -> None:
    """The `previous_starts_at`/`previous_ends_at` of a reschedule event, and its zone when the
    payload names it, bound what is bumped."""
    provider = await booking.provider(slot_minutes=60)
    reader = await _reader(app, client, provider)
    monday = _monday_after(next_local_day(provider.timezone))
    weeks = [(monday + timedelta(weeks=k), monday + timedelta(weeks=k, days=6)) for k in range(3)]
    for dates in weeks:
        await reader.warm(*dates)
    old = local_instant(monday + timedelta(days=3), time(10, 0), provider.timezone)
    new = local_instant(monday + timedelta(days=17), time(10, 0), provider.timezone)
    payload = {
        "provider_id": str(provider.id),
        "starts_at": new.astimezone(UTC).isoformat(),
        "ends_at": (new + timedelta(hours=1)).astimezone(UTC).isoformat(),
        "previous_starts_at": old.astimezone(UTC).isoformat(),
        "previous_ends_at": (old + timedelta(hours=1)).astimezone(UTC).isoformat(),
    }
    if with_zone:
        payload["timezone"] = provider.timezone
    cache: Cache = app.state.cache
    await cache.on_events([("appointment.rescheduled", payload)])
    assert [(await reader.read(*dates))[0] for dates in weeks] == [False, True, False]
