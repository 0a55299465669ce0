from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import groupby

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app.availability import repository
from app.availability.repository import Window
from app.availability.schemas import AvailabilitySearch, ProviderAvailability, ProviderSlots, Slot
from app.catalog.schemas import ClinicSummary, ProviderSummary
from app.kit.cache import Cache, provider_scope
from app.kit.db import Database
from app.kit.errors import NotFound, RangeTooLarge, ValidationFailed
from app.kit.pagination import PageParams, build_page, decode_cursor, parse_uuid
from app.kit.schemas import to_local_iso
from app.settings import Settings

MAX_RANGE_DAYS = 30  # `to - from`, so 31 dates
MAX_SEARCH_DAYS = 7
# A backstop only: changes bump the provider's version, and keys change every minute anyway.
AVAILABILITY_TTL_SECONDS = 120


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
    """The availability document, from the cache when this provider has not changed since."""
    _check_range(from_date, to_date)
    now = rules.now()

    async def compute() -> bytes:
        # Availability reads the primary: a replica's lag would offer a slot just taken.
        async with database.reading(primary=True) as session:
            result = await provider_availability(
                session, rules, provider_id, from_date, to_date, now
            )
        return orjson.dumps(result.model_dump(mode="json"))

    return await cache.get_or_compute(
        "availability",
        provider_scope(provider_id),
        f"{from_date}:{to_date}:{now:%Y%m%d%H%M}",
        compute,
        ttl_seconds=AVAILABILITY_TTL_SECONDS,
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
    session: AsyncSession,
    rules: BookingRules,
    params: PageParams,
    *,
    day: date,
    days: int,
    specialty: str | None,
    clinic_id: uuid.UUID | None,
) -> AvailabilitySearch:
    if days < 1:
        raise ValidationFailed("`days` must be at least 1", loc=("query", "days"))
    if days > MAX_SEARCH_DAYS:
        raise RangeTooLarge(f"`days` must be between 1 and {MAX_SEARCH_DAYS}.")
    after = None
    if params.cursor is not None:
        name, provider_id = decode_cursor(params.cursor, (str, parse_uuid))
        after = (name, provider_id)
    rows = await repository.search(
        session,
        # `min`: a start days before the end of the calendar would overflow, and has no slots.
        rules.window(day, min(day, date.max - timedelta(days=days)) + timedelta(days=days - 1)),
        specialty=specialty,
        clinic_id=clinic_id,
        after=after,
        page_size=params.limit + 1,
    )
    providers = []
    for _, provider_rows in groupby(rows, key=lambda r: r.provider_id):
        group = list(provider_rows)
        first = group[0]
        zone = first.tz
        providers.append(
            ProviderSlots(
                provider=ProviderSummary(
                    id=first.provider_id,
                    full_name=first.full_name,
                    specialty=first.specialty,
                    clinic=ClinicSummary(
                        id=first.clinic_id, name=first.clinic_name, timezone=first.clinic_timezone
                    ),
                ),
                timezone=zone,
                slot_minutes=first.slot_minutes,
                slots=[
                    Slot(start=to_local_iso(r.starts_at, zone), end=to_local_iso(r.ends_at, zone))
                    for r in group
                    if r.starts_at is not None
                ],
            )
        )
    items, cursor = build_page(
        providers, params.limit, lambda p: (p.provider.full_name, p.provider.id)
    )
    return AvailabilitySearch(items=items, next_cursor=cursor)
