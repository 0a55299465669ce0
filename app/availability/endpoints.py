from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.availability import service
from app.availability.rules import Rules
from app.availability.schemas import AvailabilitySearch, ProviderAvailability
from app.kit.cache import CacheDep
from app.kit.db import DatabaseDep
from app.kit.http_cache import PUBLIC_REVALIDATE, conditional_with_etag
from app.kit.pagination import Pagination

router = APIRouter(tags=["availability"])


# Availability reads the primary: a replica's lag would offer a slot that was just taken.
@router.get("/v1/providers/{provider_id}/availability", response_model=ProviderAvailability)
async def provider_availability(
    request: Request,
    provider_id: uuid.UUID,
    database: DatabaseDep,
    cache: CacheDep,
    rules: Rules,
    from_: Annotated[date, Query(alias="from", description="First local date, inclusive")],
    to: Annotated[date, Query(description="Last local date, inclusive")],
) -> Response:
    # No session up front: a cache hit needs none.
    # A hit is the stored bytes with their ETag as they are: no model, no hashing.
    stored = await service.provider_availability_json(
        database, cache, rules, provider_id, from_, to
    )
    return conditional_with_etag(request, stored, cache_control=PUBLIC_REVALIDATE)


@router.get("/v1/availability", response_model=AvailabilitySearch)
async def search_availability(
    database: DatabaseDep,
    rules: Rules,
    page: Pagination,
    date_: Annotated[date, Query(alias="date", description="First local date")],
    days: Annotated[int, Query(description="Number of local dates, 1 to 7")] = 1,
    specialty: Annotated[str | None, Query(max_length=200)] = None,
    clinic_id: uuid.UUID | None = None,
) -> Response:
    # Availability reads the primary: a replica's lag would offer a slot just taken.
    async with database.reader(primary=True) as reader:
        body = await service.search(
            reader, rules, page, day=date_, days=days, specialty=specialty, clinic_id=clinic_id
        )
    return Response(body, media_type="application/json")
