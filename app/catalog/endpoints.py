from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import Response

from app.auth.dependencies import AdminPrincipal, Passwords_, Principal, require_roles
from app.catalog import service
from app.catalog.schemas import (
    ClinicIn,
    ClinicOut,
    ProviderCreated,
    ProviderIn,
    ProviderProfile,
    ProviderSummary,
    SpecialtyOut,
)
from app.kit.cache import CATALOG, CacheDep, profile_scope
from app.kit.db import DatabaseDep, ReadSession, WriteSession
from app.kit.http_cache import PUBLIC_SHORT, conditional_bytes
from app.kit.pagination import Page, PageParams, Pagination
from app.models import Role

router = APIRouter(tags=["catalog"])

ProviderManager = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.STAFF))]


def _page_key(page: PageParams, *filters: object) -> str:
    return ":".join(str(part) for part in (page.limit, page.cursor, *filters))


@router.get("/v1/specialties", response_model=Page[SpecialtyOut])
async def list_specialties(
    request: Request, session: ReadSession, cache: CacheDep, page: Pagination
) -> Response:
    async def compute() -> Page[SpecialtyOut]:
        items, cursor = await service.list_specialties(session, page)
        return Page(items=items, next_cursor=cursor)

    body = await service.cached_json(cache, "specialties", CATALOG, _page_key(page), compute)
    return conditional_bytes(request, body, cache_control=PUBLIC_SHORT)


@router.get("/v1/clinics", response_model=Page[ClinicOut])
async def list_clinics(
    request: Request, session: ReadSession, cache: CacheDep, page: Pagination
) -> Response:
    async def compute() -> Page[ClinicOut]:
        items, cursor = await service.list_clinics(session, page)
        return Page(items=items, next_cursor=cursor)

    body = await service.cached_json(cache, "clinics", CATALOG, _page_key(page), compute)
    return conditional_bytes(request, body, cache_control=PUBLIC_SHORT)


@router.post("/v1/clinics", status_code=status.HTTP_201_CREATED, response_model=ClinicOut)
async def create_clinic(data: ClinicIn, _: AdminPrincipal, session: WriteSession) -> ClinicOut:
    return await service.create_clinic(session, data)


@router.post("/v1/providers", status_code=status.HTTP_201_CREATED, response_model=ProviderCreated)
async def create_provider(
    data: ProviderIn, principal: ProviderManager, session: WriteSession, passwords: Passwords_
) -> ProviderCreated:
    return await service.create_provider(session, passwords, principal, data)


@router.get("/v1/providers", response_model=Page[ProviderSummary])
async def list_providers(
    request: Request,
    session: ReadSession,
    cache: CacheDep,
    page: Pagination,
    specialty: Annotated[str | None, Query(max_length=200)] = None,
    clinic_id: uuid.UUID | None = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    async def compute() -> Page[ProviderSummary]:
        items, cursor = await service.list_providers(
            session, page, specialty=specialty, clinic_id=clinic_id, q=q
        )
        return Page(items=items, next_cursor=cursor)

    key = _page_key(page, (specialty or "").lower(), clinic_id, q)
    body = await service.cached_json(cache, "providers", CATALOG, key, compute)
    return conditional_bytes(request, body, cache_control=PUBLIC_SHORT)


@router.get("/v1/providers/{provider_id}", response_model=ProviderProfile)
async def get_provider(
    request: Request, provider_id: uuid.UUID, database: DatabaseDep, cache: CacheDep
) -> Response:
    async def compute() -> ProviderProfile:
        async with database.reader() as reader:  # only on a miss
            return await service.get_profile(reader, provider_id)

    body = await service.cached_json(
        cache, "profile", profile_scope(provider_id), "profile", compute
    )
    return conditional_bytes(request, body, cache_control=PUBLIC_SHORT)
