from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from app.availability import service
from app.availability.schemas import AvailabilitySearch, ProviderAvailability
from app.availability.service import BookingRules
from app.kit.db import PrimaryReadSession
from app.kit.pagination import Pagination

router = APIRouter(tags=["availability"])


def booking_rules(request: Request) -> BookingRules:
    return BookingRules.from_settings(request.app.state.settings)


Rules = Annotated[BookingRules, Depends(booking_rules)]


# Availability reads the primary: a replica's lag would offer a slot that was just taken.
@router.get("/v1/providers/{provider_id}/availability", response_model=ProviderAvailability)
async def provider_availability(
    provider_id: uuid.UUID,
    session: PrimaryReadSession,
    rules: Rules,
    from_: Annotated[date, Query(alias="from", description="First local date, inclusive")],
    to: Annotated[date, Query(description="Last local date, inclusive")],
) -> ProviderAvailability:
    return await service.provider_availability(session, rules, provider_id, from_, to)


@router.get("/v1/availability", response_model=AvailabilitySearch)
async def search_availability(
    session: PrimaryReadSession,
    rules: Rules,
    page: Pagination,
    date_: Annotated[date, Query(alias="date", description="First local date")],
    days: Annotated[int, Query(description="Number of local dates, 1 to 7")] = 1,
    specialty: Annotated[str | None, Query(max_length=200)] = None,
    clinic_id: uuid.UUID | None = None,
) -> AvailabilitySearch:
    return await service.search(
        session, rules, page, day=date_, days=days, specialty=specialty, clinic_id=clinic_id
    )
