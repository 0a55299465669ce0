"""Availability JSON rendered in SQL equals, byte for byte, what the pydantic models gave.

The documents are now assembled from slot strings that PostgreSQL renders (issue 13): these
tests build the same documents the previous way (a `Slot` model per slot, `to_local_iso`,
`orjson` over `model_dump` for the cached document, Starlette's `json.dumps` for the search
response) from the row-per-slot query, and compare the bytes, over DST transitions, zones with
half-hour offsets and pages with a cursor.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, time, timedelta

import orjson
import pytest

from app.availability import repository, service
from app.availability.rules import BookingRules
from app.availability.schemas import AvailabilitySearch, ProviderSlots, Slot
from app.catalog.schemas import ClinicSummary, ProviderSummary
from app.kit.db import Database
from app.kit.pagination import PageParams, build_page
from app.kit.schemas import to_local_iso
from app.models import Role
from tests.fixtures.app import Accounts, count_statements
from tests.fixtures.booking import Booking, ProviderSetup

# Wall-clock rules crossing the spring-forward gaps and fall-back folds (01:00-03:00) and a
# daytime block; a Sunday without rules gives a provider with no slot on some days.
RULES = tuple((day, time(0, 0), time(3, 30)) for day in range(1, 7)) + tuple(
    (day, time(9, 0), time(11, 0)) for day in range(1, 7)
)
ZONES = ("Europe/London", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC")
# (the instant "now" is pinned to, first date, last date): 31 dates around the 2026 changes.
WINDOWS = (
    (datetime(2026, 3, 1, tzinfo=UTC), date(2026, 3, 6), date(2026, 4, 5)),
    (datetime(2026, 9, 30, tzinfo=UTC), date(2026, 10, 2), date(2026, 11, 1)),
)
# First dates of 7-day searches that contain a DST change in one of the zones.
SEARCH_DAYS = (date(2026, 3, 7), date(2026, 3, 27), date(2026, 4, 1), date(2026, 10, 24))


def _pinned(now: datetime) -> BookingRules:
    class Pinned(BookingRules):
        @staticmethod
        def now() -> datetime:
            return now

    return Pinned(min_notice=timedelta(minutes=60), horizon=timedelta(days=90))


async def _providers(booking: Booking, accounts: Accounts, specialty: str) -> list[ProviderSetup]:
    clinic = await booking.clinic(name='The "Quoted" Clinic — Zoë', timezone="Europe/London")
    return [
        await booking.provider(
            timezone=zone,
            slot_minutes=30 if index % 2 else 45,
            rules=RULES,
            clinic_id=clinic,
            specialty=specialty,
            full_name=f'Dr. "Zoë" Ångström {index}',
        )
        for index, zone in enumerate(ZONES)
    ]


async def test_provider_document_is_byte_identical(
    booking: Booking, accounts: Accounts, database: Database
) -> None:
    providers = await _providers(booking, accounts, f"Bytes {uuid.uuid4().hex[:8]}")
    compared = 0
    async with database.reading(primary=True) as session:
        for now, first, last in WINDOWS:
            rules = _pinned(now)
            for provider in providers:
                model = await service.provider_availability(
                    session, rules, provider.id, first, last, now
                )
                old = orjson.dumps(model.model_dump(mode="json"))
                new = await service.provider_availability_body(
                    session, rules, provider.id, first, last, now
                )
                assert new == old, (provider.timezone, first)
                compared += len(model.slots)
    assert compared > 1000  # the windows did hold slots, DST days included


async def _old_search(
    database: Database, rules: BookingRules, day: date, specialty: str, limit: int
) -> bytes:
    """The search document as the pydantic path rendered it: one model per slot."""
    window = rules.window(day, day + timedelta(days=6))
    async with database.reading(primary=True) as session:
        rows = await repository.search(
            session, window, specialty=specialty, clinic_id=None, after=None, page_size=limit + 1
        )
        providers = []
        for row in rows:
            slots = await repository.free_slots(session, row.provider_id, window)
            zone = row.tz
            providers.append(
                ProviderSlots(
                    provider=ProviderSummary(
                        id=row.provider_id,
                        full_name=row.full_name,
                        specialty=row.specialty,
                        clinic=ClinicSummary(
                            id=row.clinic_id, name=row.clinic_name, timezone=row.clinic_timezone
                        ),
                    ),
                    timezone=zone,
                    slot_minutes=row.slot_minutes,
                    slots=[
                        Slot(
                            start=to_local_iso(s.starts_at, zone), end=to_local_iso(s.ends_at, zone)
                        )
                        for s in slots
                        if s.starts_at is not None
                    ],
                )
            )
    items, cursor = build_page(providers, limit, lambda p: (p.provider.full_name, p.provider.id))
    content = AvailabilitySearch(items=items, next_cursor=cursor).model_dump(mode="json")
    # What Starlette's JSONResponse rendered for the endpoint's response model.
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("limit", [2, 10])
async def test_search_document_is_byte_identical(
    booking: Booking, accounts: Accounts, database: Database, limit: int
) -> None:
    specialty = f"Search bytes {uuid.uuid4().hex[:8]}"
    await _providers(booking, accounts, specialty)
    for day in SEARCH_DAYS:
        rules = _pinned(datetime.combine(day, time(0), tzinfo=UTC) - timedelta(days=2))
        async with database.reading(primary=True) as session:
            new = await service.search(
                session,
                rules,
                PageParams(limit=limit, cursor=None),
                day=day,
                days=7,
                specialty=specialty,
                clinic_id=None,
            )
        old = await _old_search(database, rules, day, specialty, limit)
        assert new == old, day
        document = orjson.loads(new)
        assert len(document["items"]) == min(limit, len(ZONES))
        assert (document["next_cursor"] is None) == (limit >= len(ZONES))
        assert any(item["slots"] for item in document["items"])


async def test_search_over_http_is_unchanged(
    booking: Booking, accounts: Accounts, database: Database
) -> None:
    """Through the endpoint: the same bytes and content type as the response model gave."""
    specialty = f"Search http {uuid.uuid4().hex[:8]}"
    await _providers(booking, accounts, specialty)
    await accounts.create(Role.PATIENT)
    day = datetime.now(UTC).date() + timedelta(days=3)
    with count_statements(database.primary) as log:
        response = await booking.client.get(
            "/v1/availability",
            params={"date": day.isoformat(), "days": 7, "specialty": specialty, "limit": 3},
        )
    assert response.status_code == 200, response.text
    assert len(log.statements) == 1  # the page, its providers and their slots in one statement
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert [item["provider"]["full_name"] for item in document["items"]] == [
        f'Dr. "Zoë" Ångström {index}' for index in range(3)
    ]
    assert document["next_cursor"] is not None
    following = await booking.client.get(
        "/v1/availability",
        params={
            "date": day.isoformat(),
            "days": 7,
            "specialty": specialty,
            "limit": 3,
            "cursor": document["next_cursor"],
        },
    )
    assert [item["provider"]["full_name"] for item in following.json()["items"]] == [
        f'Dr. "Zoë" Ångström {index}' for index in range(3, len(ZONES))
    ]
    assert following.json()["next_cursor"] is None
