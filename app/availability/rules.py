"""The booking window, the same for every provider: how soon a slot may be booked (the minimum
notice) and how far ahead (the horizon), from the settings; and the request's dependency that
hands it to the endpoints of availability and of appointments alike."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated

from fastapi import Depends, Request

from app.availability.repository import Window
from app.settings import Settings


@dataclass(frozen=True)
class BookingRules:
    min_notice: timedelta
    horizon: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> BookingRules:
        return cls(
            min_notice=timedelta(minutes=settings.min_notice_minutes),
            horizon=timedelta(days=settings.booking_horizon_days),
        )

    @staticmethod
    def now() -> datetime:
        """The current minute, rounded up: availability is computed per whole minute, so a
        cached window equals a fresh one for that minute and never offers a slot inside the
        minimum notice."""
        current = datetime.now(UTC)
        floor = current.replace(second=0, microsecond=0)
        return floor if floor == current else floor + timedelta(minutes=1)

    def clock_key(self, from_date: date, to_date: date, now: datetime) -> str:
        """The part of a window's cache key that the clock decides. A window whose every
        possible slot lies after the minimum notice and before the horizon is the same at any
        minute, so its key does not roll over with the clock (a cached window of next week stays
        a hit for its whole TTL); only a window the notice or the horizon cuts keys by minute."""
        clipped = self.window(from_date, to_date, now)
        if (clipped.from_date, clipped.to_date) != (from_date, to_date):
            return f"{now:%Y%m%d%H%M}"  # far outside the bookable window (and safe to add to)
        opens = datetime.combine(from_date, time(0), UTC) - _DATE_MARGIN
        closes = datetime.combine(to_date + _ONE_DAY, time(0), UTC) + _DATE_MARGIN
        if now + self.min_notice <= opens and now + self.horizon >= closes:
            return "open"
        return f"{now:%Y%m%d%H%M}"

    def window(self, from_date: date, to_date: date, now: datetime | None = None) -> Window:
        now = now or self.now()
        earliest, latest = now + self.min_notice, now + self.horizon
        # Dates outside the bookable window hold no slot, so they are clipped to it (with a day
        # or two to spare for the provider's offset from UTC). That also keeps extreme dates out
        # of the SQL date arithmetic: asyncpg sends 0001-01-01 and 9999-12-31 as -infinity and
        # infinity, which PostgreSQL refuses to subtract from.
        # A range wholly outside ends up empty (`to` the day before `from`), never extreme.
        first, last = (earliest - _DATE_MARGIN).date(), (latest + _DATE_MARGIN).date()
        return Window(
            from_date=min(max(from_date, first), last + _ONE_DAY),
            to_date=max(min(to_date, last), first - _ONE_DAY),
            earliest=earliest,
            latest=latest,
        )


_DATE_MARGIN = timedelta(days=2)
_ONE_DAY = timedelta(days=1)


async def booking_rules(request: Request) -> BookingRules:
    return BookingRules.from_settings(request.app.state.settings)


Rules = Annotated[BookingRules, Depends(booking_rules)]
