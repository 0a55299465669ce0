from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app.availability import repository
from app.availability.repository import Window
from app.availability.schemas import ProviderAvailability, Slot
from app.kit import sql
from app.kit.cache import Cache, Scope, availability_day_scopes, availability_scope
from app.kit.db import AnyRow, Database
from app.kit.errors import NotFound, RangeTooLarge, ValidationFailed
from app.kit.http_cache import with_etag
from app.kit.pagination import PageParams, build_page, decode_cursor, parse_uuid
from app.kit.schemas import to_local_iso
from app.settings import Settings

MAX_RANGE_DAYS = 30  # `to - from`, so 31 dates
MAX_SEARCH_DAYS = 7
# A backstop only: changes bump the provider's or the date's version, and the keys of windows
# the minimum notice or the horizon cuts change every minute anyway.
AVAILABILITY_TTL_SECONDS = 120
AVAILABILITY_CACHE = "availability"


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
    after = None
    if params.cursor is not None:
        name, provider_id = decode_cursor(params.cursor, (str, parse_uuid))
        after = (name, provider_id)
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
