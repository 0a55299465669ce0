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
from app.kit.db import ReadSession, WriteSession
from app.kit.http_cache import conditional_json
from app.kit.pagination import Page, Pagination
from app.models import Role

router = APIRouter(tags=["catalog"])

ProviderManager = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.STAFF))]


@router.get("/v1/specialties", response_model=Page[SpecialtyOut])
async def list_specialties(request: Request, session: ReadSession, page: Pagination) -> Response:
    items, cursor = await service.list_specialties(session, page)
    return conditional_json(request, Page(items=items, next_cursor=cursor))


@router.get("/v1/clinics", response_model=Page[ClinicOut])
async def list_clinics(request: Request, session: ReadSession, page: Pagination) -> Response:
    items, cursor = await service.list_clinics(session, page)
    return conditional_json(request, Page(items=items, next_cursor=cursor))


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
    session: ReadSession,
    page: Pagination,
    specialty: Annotated[str | None, Query(max_length=200)] = None,
    clinic_id: uuid.UUID | None = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[ProviderSummary]:
    items, cursor = await service.list_providers(
        session, page, specialty=specialty, clinic_id=clinic_id, q=q
    )
    return Page(items=items, next_cursor=cursor)


@router.get("/v1/providers/{provider_id}", response_model=ProviderProfile)
async def get_provider(provider_id: uuid.UUID, session: ReadSession) -> ProviderProfile:
    return await service.get_profile(session, provider_id)
