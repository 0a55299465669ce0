"""Pydantic building blocks shared by every domain's schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import AfterValidator, AwareDatetime, StringConstraints

_ZONES = frozenset(available_timezones())


def _check_timezone(value: str) -> str:
    if value not in _ZONES:
        raise ValueError("must be an IANA time zone name such as Europe/London")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("unknown time zone") from exc
    return value


TimeZoneName = Annotated[str, StringConstraints(max_length=64), AfterValidator(_check_timezone)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]


# RFC 3339 with an explicit offset; a naive time is a validation error.
def _within_the_calendar_in_utc(value: datetime) -> datetime:
    # 0001-01-01T00:00+14:00 is a valid RFC 3339 time that has no UTC equivalent: refused here,
    # as a validation error, rather than by the driver as a 500.
    try:
        value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("time is out of the supported range") from exc
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_within_the_calendar_in_utc)]


def to_local_iso(value: datetime, zone: str) -> str:
    """RFC 3339 rendering of an instant in the given zone's offset."""
    return value.astimezone(ZoneInfo(zone)).isoformat()
