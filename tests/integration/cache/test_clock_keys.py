"""The clock is part of an availability key only where it changes the answer: a window the
minimum notice or the horizon cuts is keyed by minute; a window wholly between them stays the
same cached value from minute to minute (until a change bumps its dates, or its TTL)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI

from app.availability.rules import BookingRules
from tests.fixtures.booking import Booking, next_local_day
from tests.fixtures.cache import CacheCounts


class Clock:
    def __init__(self) -> None:
        self.now = BookingRules.now()

    def advance(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(BookingRules, "now", staticmethod(lambda: clock.now))
    return clock


async def _read(
    app: FastAPI, client: httpx.AsyncClient, provider_id: object, first: date, last: date
) -> tuple[bool, list[str]]:
    hits = CacheCounts().hits
    before = hits.get("availability", 0)
    response = await client.get(
        f"/v1/providers/{provider_id}/availability",
        params={"from": first.isoformat(), "to": last.isoformat()},
    )
    assert response.status_code == 200, response.text
    return hits.get("availability", 0) == before + 1, [s["start"] for s in response.json()["slots"]]


async def test_a_window_clear_of_the_notice_stays_cached_as_the_minutes_pass(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, clock: Clock
) -> None:
    provider = await booking.provider()
    first = next_local_day(provider.timezone, days_ahead=4)
    last = first + timedelta(days=6)
    assert (await _read(app, client, provider.id, first, last))[0] is False
    _, slots = await _read(app, client, provider.id, first, last)

    clock.advance(7)
    assert await _read(app, client, provider.id, first, last) == (True, slots)


async def test_a_window_the_notice_cuts_is_computed_again_each_minute(
    app: FastAPI, client: httpx.AsyncClient, booking: Booking, clock: Clock
) -> None:
    provider = await booking.provider()
    today = next_local_day(provider.timezone, days_ahead=0)
    window = (today - timedelta(days=1), today + timedelta(days=2))
    await _read(app, client, provider.id, *window)
    assert (await _read(app, client, provider.id, *window))[0] is True

    clock.advance(1)
    assert (await _read(app, client, provider.id, *window))[0] is False


def test_the_clock_key_is_the_minute_only_near_the_notice_and_the_horizon() -> None:
    rules = BookingRules(min_notice=timedelta(minutes=60), horizon=timedelta(days=90))
    now = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    today = now.date()
    assert rules.clock_key(today, today + timedelta(days=6), now) == "202612031000"
    assert rules.clock_key(today + timedelta(days=3), today + timedelta(days=9), now) == "open"
    near_horizon = today + timedelta(days=88)
    assert rules.clock_key(near_horizon, near_horizon, now) == "202612031000"
    assert rules.clock_key(today - timedelta(days=9), today - timedelta(days=3), now) != "open"
