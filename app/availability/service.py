from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app.availability import repository
from app.availability.rules import BookingRules
from app.availability.schemas import ProviderAvailability, Slot
from app.kit import sql
from app.kit.cache import Cache, Scope, availability_day_scopes, availability_scope
from app.kit.db import AnyRow, Database
from app.kit.errors import NotFound, RangeTooLarge, ValidationFailed
from app.kit.http_cache import with_etag
from app.kit.pagination import PageParams, build_page, parse_uuid
from app.kit.schemas import to_local_iso

MAX_RANGE_DAYS = 30  # `to - from`, so 31 dates
MAX_SEARCH_DAYS = 7
# A backstop only: changes bump the provider's or the date's version, and the keys of windows
# the minimum notice or the horizon cuts change every minute anyway.
AVAILABILITY_TTL_SECONDS = 120
AVAILABILITY_CACHE = "availability"


class SlotRefusal(enum.Enum):
    """Why a start cannot be booked; each value is the sentence the client is told."""

    OFF_GRID = "This time is not on the provider's slot grid."
    OUTSIDE_WINDOW = "This slot is in the past, too soon, or beyond the booking horizon."
    TIME_OFF = "The provider is away at this time."
    TAKEN = "This slot has just been taken; pick another one."


async def check_slot(
    session: AsyncSession,
    rules: BookingRules,
    provider_id: uuid.UUID,
    timezone: str,
    start: datetime,
    *,
    ignore_appointment_id: uuid.UUID | None = None,
) -> tuple[datetime, datetime] | SlotRefusal:
    """The slot at `start` (its start and end) if it is on the provider's grid, bookable and
    free, not counting the appointment `ignore_appointment_id` (one being moved); else why not.
    One statement, on the caller's session: booking calls it under the provider's lock."""
    local_day = start.astimezone(ZoneInfo(timezone)).date()
    state = await repository.slot_state(
        session,
        provider_id,
        start,
        rules.window(local_day, local_day),
        ignore_appointment_id=ignore_appointment_id,
    )
    if state is None:
        return SlotRefusal.OFF_GRID
    if not state.bookable_time:
        return SlotRefusal.OUTSIDE_WINDOW
    if state.time_off:
        return SlotRefusal.TIME_OFF
    if state.taken:
        return SlotRefusal.TAKEN
    starts_at: datetime = state.starts_at
    ends_at: datetime = state.ends_at
    return starts_at, ends_at


def _check_range(from_date: date, to_date: date) -> None:
    if to_date < from_date:
        raise ValidationFailed("`to` must not be before `from`", loc=("query", "to"))
    if (to_date - from_date).days > MAX_RANGE_DAYS:
        raise RangeTooLarge(f"At most {MAX_RANGE_DAYS + 1} days can be asked for at once.")


async def provider_availability_json(
    database: Database,
    cache: Cache,
    rules: BookingRules,
    provider_id: uuid.UUID,
    from_date: date,
    to_date: date,
) -> bytes:
    """The availability document behind its ETag (`with_etag`), from the cache when the
    provider's dates of the range have not changed since."""
    _check_range(from_date, to_date)
    now = rules.now()
    scope, key, within = _cache_address(rules, provider_id, from_date, to_date, now)

    async def compute() -> bytes:
        # Availability reads the primary: a replica's lag would offer a slot just taken.
        async with database.reader(primary=True) as reader:
            body = await provider_availability_body(
                reader, rules, provider_id, from_date, to_date, now
            )
        return with_etag(body)

    return await cache.get_or_compute(
        AVAILABILITY_CACHE, scope, key, compute, ttl_seconds=AVAILABILITY_TTL_SECONDS, within=within
    )


async def cached_availability_json(
    cache: Cache, rules: BookingRules, provider_id: uuid.UUID, from_date: date, to_date: date
) -> bytes | None:
    """What `provider_availability_json` would answer from the cache (None on a miss), computing
    nothing; raises as it does for a range it refuses."""
    _check_range(from_date, to_date)
    scope, key, within = _cache_address(rules, provider_id, from_date, to_date, rules.now())
    return await cache.lookup(AVAILABILITY_CACHE, scope, key, within=within)


def _cache_address(
    rules: BookingRules, provider_id: uuid.UUID, from_date: date, to_date: date, now: datetime
) -> tuple[Scope, str, Sequence[Scope]]:
    """Where a window's document is cached: its scope, key and the date scopes within."""
    return (
        availability_scope(provider_id),
        f"{from_date}:{to_date}:{rules.clock_key(from_date, to_date, now)}",
        availability_day_scopes(provider_id, from_date, to_date),
    )


def _slots(items: str | None) -> orjson.Fragment:
    return orjson.Fragment(f"[{items or ''}]")


async def provider_availability_body(
    executor: sql.Executor,
    rules: BookingRules,
    provider_id: uuid.UUID,
    from_date: date,
    to_date: date,
    now: datetime | None = None,
) -> bytes:
    """The JSON of `provider_availability`, byte for byte, with the slots rendered in SQL."""
    _check_range(from_date, to_date)
    window = rules.window(from_date, to_date, now)
    row = await repository.free_slots_json(executor, provider_id, window)
    if row is None:
        raise NotFound("No such provider.")
    return orjson.dumps(
        {
            "provider_id": str(provider_id),
            "timezone": row.tz,
            "slot_minutes": row.slot_minutes,
            "slots": _slots(row.slots),
        }
    )


async def provider_availability(
    session: AsyncSession,
    rules: BookingRules,
    provider_id: uuid.UUID,
    from_date: date,
    to_date: date,
    now: datetime | None = None,
) -> ProviderAvailability:
    _check_range(from_date, to_date)
    rows = await repository.free_slots(session, provider_id, rules.window(from_date, to_date, now))
    if not rows:
        raise NotFound("No such provider.")
    zone = rows[0].tz
    return ProviderAvailability(
        provider_id=provider_id,
        timezone=zone,
        slot_minutes=rows[0].slot_minutes,
        slots=[
            Slot(start=to_local_iso(r.starts_at, zone), end=to_local_iso(r.ends_at, zone))
            for r in rows
            if r.starts_at is not None
        ],
    )


async def search(
    executor: sql.Executor,
    rules: BookingRules,
    params: PageParams,
    *,
    day: date,
    days: int,
    specialty: str | None,
    clinic_id: uuid.UUID | None,
) -> bytes:
    """The `AvailabilitySearch` JSON of a page, built from one row per provider whose slots
    come rendered from SQL: no Python object per slot."""
    if days < 1:
        raise ValidationFailed("`days` must be at least 1", loc=("query", "days"))
    if days > MAX_SEARCH_DAYS:
        raise RangeTooLarge(f"`days` must be between 1 and {MAX_SEARCH_DAYS}.")
    after = params.position(str, parse_uuid)
    rows = await repository.search(
        executor,
        # `min`: a start days before the end of the calendar would overflow, and has no slots.
        rules.window(day, min(day, date.max - timedelta(days=days)) + timedelta(days=days - 1)),
        specialty=specialty,
        clinic_id=clinic_id,
        after=after,
        page_size=params.limit + 1,
    )
    page, cursor = build_page(rows, params.limit, lambda r: (r.full_name, r.provider_id))
    return orjson.dumps({"items": [_provider_slots(r) for r in page], "next_cursor": cursor})


def _provider_slots(row: AnyRow) -> dict[str, object]:
    """A `ProviderSlots` item, its keys in the model's order."""
    return {
        "provider": {
            "id": str(row.provider_id),  # asyncpg's UUID type, which orjson does not know
            "full_name": row.full_name,
            "specialty": row.specialty,
            "clinic": {
                "id": str(row.clinic_id),
                "name": row.clinic_name,
                "timezone": row.clinic_timezone,
            },
        },
        "timezone": row.tz,
        "slot_minutes": row.slot_minutes,
        "slots": _slots(row.slots),
    }
