"""Pydantic building blocks shared by every domain's schemas."""

from __future__ import annotations

from datetime import datetime
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
Instant = AwareDatetime


def to_local_iso(value: datetime, zone: str) -> str:
    """RFC 3339 rendering of an instant in the given zone's offset."""
    return value.astimezone(ZoneInfo(zone)).isoformat()
