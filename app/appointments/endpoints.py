from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response

from app.appointments import service
from app.appointments.errors import SlotUnavailable
from app.appointments.schemas import (
    AppointmentOut,
    BookIn,
    BulkIn,
    BulkOut,
    CancelIn,
    Order,
    RangeCancelIn,
    RangeCancelOut,
    RescheduleIn,
)
from app.auth.dependencies import CurrentPrincipal
from app.availability.rules import Rules
from app.kit.db import DatabaseDep, PrimaryReadSession, WriteSession
from app.kit.idempotency import IdempotencyKeyHeader, IdempotentCall, run_idempotent
from app.kit.metrics import BOOKING_CONFLICTS
from app.kit.pagination import Page, Pagination, item_response, page_response
from app.kit.rate_limit import Limiter
from app.kit.schemas import Instant
from app.models import AppointmentStatus

router = APIRouter(tags=["appointments"])

_IDEMPOTENT_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"headers": {"Idempotent-Replayed": {"description": "true on a replayed response"}}},
}


@router.post(
    "/v1/appointments",
    status_code=status.HTTP_201_CREATED,
    response_model=AppointmentOut,
    responses=_IDEMPOTENT_RESPONSES,
)
async def book(
    data: BookIn,
    request: Request,
    principal: CurrentPrincipal,
    key: IdempotencyKeyHeader,
    database: DatabaseDep,
    rules: Rules,
    limiter: Limiter,
) -> Response:
    await limiter.enforce(limiter.policies.booking_per_user, str(principal.user_id))
    call = IdempotentCall.of(request, principal.user_id, key, data)
    # The unit of work opened here rather than by the WriteSession dependency (the same
    # boundary, committed before the response is sent): a generator dependency costs FastAPI
    # a context and a shielded exit, a twentieth of the API's CPU for the most frequent write.
    try:
        async with database.unit_of_work() as session:
            return await run_idempotent(
                session,
                call,
                lambda: service.book(session, rules, principal, data),
                status_code=status.HTTP_201_CREATED,
            )
    except SlotUnavailable:
        # Counted as the conflict is answered, not where the service raises it: the refusal
        # of a retry (its slot taken by its own first attempt) that the key turns into a
        # replay is no conflict.
        BOOKING_CONFLICTS.inc()
        raise


@router.get("/v1/appointments", response_model=Page[AppointmentOut])
async def list_appointments(
    principal: CurrentPrincipal,
    database: DatabaseDep,
    page: Pagination,
    status_: Annotated[list[AppointmentStatus] | None, Query(alias="status")] = None,
    from_: Annotated[Instant | None, Query(alias="from", description="Starts at or after")] = None,
    to: Annotated[Instant | None, Query(description="Starts before")] = None,
    order: Order = Order.ASC,
) -> Response:
    # History tolerates replica lag; anything that may still change reads the primary.
    past_only = to is not None and to <= datetime.now(UTC)
    async with database.reader(primary=not past_only) as reader:
        items, cursor = await service.list_appointments(
            reader,
            principal,
            page,
            statuses=status_ or [],
            starts_from=from_,
            starts_before=to,
            order=order,
        )
    # Built from rows and serialised once; response_model above documents the same shape.
    return page_response(items, cursor)


@router.get("/v1/appointments/{appointment_id}", response_model=AppointmentOut)
async def get_appointment(
    appointment_id: uuid.UUID, principal: CurrentPrincipal, session: PrimaryReadSession
) -> AppointmentOut:
    return await service.get(session, principal, appointment_id)


@router.post("/v1/appointments/{appointment_id}/cancel", response_model=AppointmentOut)
async def cancel(
    appointment_id: uuid.UUID, data: CancelIn, principal: CurrentPrincipal, database: DatabaseDep
) -> Response:
    async with database.unit_of_work() as session:  # as in `book`
        changed = await service.change_status(
            session, principal, appointment_id, AppointmentStatus.CANCELLED, reason=data.reason
        )
    # Built from rows and serialised once; response_model above documents the same shape.
    return item_response(changed)


@router.post(
    "/v1/appointments/{appointment_id}/reschedule",
    response_model=AppointmentOut,
    responses=_IDEMPOTENT_RESPONSES,
)
async def reschedule(
    appointment_id: uuid.UUID,
    data: RescheduleIn,
    request: Request,
    principal: CurrentPrincipal,
    key: IdempotencyKeyHeader,
    session: WriteSession,
    rules: Rules,
) -> Response:
    try:
        return await run_idempotent(
            session,
            IdempotentCall.of(request, principal.user_id, key, data),
            lambda: service.reschedule(session, rules, principal, appointment_id, data.start),
            status_code=status.HTTP_200_OK,
        )
    except SlotUnavailable:  # counted as in `book`
        BOOKING_CONFLICTS.inc()
        raise


@router.post("/v1/appointments/{appointment_id}/check-in", response_model=AppointmentOut)
async def check_in(
    appointment_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession
) -> Response:
    return item_response(
        await service.change_status(
            session, principal, appointment_id, AppointmentStatus.CHECKED_IN
        )
    )


@router.post("/v1/appointments/{appointment_id}/complete", response_model=AppointmentOut)
async def complete(
    appointment_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession
) -> Response:
    return item_response(
        await service.change_status(session, principal, appointment_id, AppointmentStatus.COMPLETED)
    )


@router.post("/v1/appointments/{appointment_id}/no-show", response_model=AppointmentOut)
async def no_show(
    appointment_id: uuid.UUID, principal: CurrentPrincipal, session: WriteSession
) -> Response:
    return item_response(
        await service.change_status(session, principal, appointment_id, AppointmentStatus.NO_SHOW)
    )


@router.post("/v1/appointments/bulk", response_model=BulkOut)
async def bulk(data: BulkIn, principal: CurrentPrincipal, session: WriteSession) -> BulkOut:
    """Cancel, check in, complete or mark as no-show up to 500 appointments at once.

    Every id gets a result, in the request's order: `ok`, or `not_found` (no such appointment,
    or not one the caller may see) or `invalid_transition`. Visits that changed get their
    outbox events (patients are told of cancellations)."""
    return await service.bulk(session, principal, data)


@router.post("/v1/providers/{provider_id}/cancellations", response_model=RangeCancelOut)
async def cancel_range(
    provider_id: uuid.UUID, data: RangeCancelIn, principal: CurrentPrincipal, session: WriteSession
) -> RangeCancelOut:
    """Cancel every booked visit of the provider that starts in `[from, to)` (at most 366
    days); each patient is notified. The slots become bookable again."""
    return await service.cancel_range(session, principal, provider_id, data)
