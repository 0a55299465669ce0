from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from app.analytics import service
from app.analytics.schemas import ClinicAnalytics
from app.auth.dependencies import Principal, require_roles
from app.kit.db import ReadTransaction
from app.kit.pagination import MAX_LIMIT, PageParams
from app.models import Role

router = APIRouter(tags=["analytics"])

AnalyticsReader = Annotated[Principal, Depends(require_roles(Role.STAFF, Role.ADMIN))]
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


def _quality(accept: str, media_type: str) -> float:
    """The q-value `accept` gives exactly this media type (0 when it is not named)."""
    for part in accept.split(","):
        name, *params = (piece.strip() for piece in part.split(";"))
        if name.lower() != media_type:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value)
                except ValueError:
                    return 0.0
        return 1.0
    return 0.0


def wants_csv(accept: str | None) -> bool:
    """CSV when the client names `text/csv` and does not prefer JSON; JSON otherwise."""
    if not accept:
        return False
    csv_q = _quality(accept, "text/csv")
    return csv_q > 0 and csv_q >= _quality(accept, "application/json")


@router.get(
    "/v1/analytics/clinics",
    response_model=ClinicAnalytics,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def clinic_analytics(
    request: Request,
    response: Response,
    principal: AnalyticsReader,
    session: ReadTransaction,  # its statement timeout is SET LOCAL
    from_: Annotated[date, Query(alias="from", description="First local date, inclusive")],
    to: Annotated[date, Query(description="Last local date, inclusive")],
    clinic_id: Annotated[uuid.UUID | None, Query(description="Only this clinic")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    accept: Annotated[str | None, Header()] = None,
) -> ClinicAnalytics | Response:
    """Per clinic: appointments booked, completed, cancelled and no-shows over local dates.

    * `from`/`to` are inclusive dates, each clinic's own local dates (the day of a visit is
      the date of its start in the clinic's time zone). At most 366 dates, else 422
      `range_too_large`; `to` before `from` is 422 `validation_error`.
    * `booked` counts every appointment of those days whatever its status now (every visit
      that was booked); `completed`, `cancelled`, `no_show` count those in that status now;
      `no_show_rate` = no_show / (completed + no_show), null when that is 0.
    * Staff see their own clinic, admins every clinic (optionally one, `clinic_id`); other
      roles are refused with 403 `forbidden`.
    * JSON: `{from, to, items, next_cursor}`, items ordered by clinic name, keyset-paginated
      (`limit` 1-100, default 100: one row per clinic, a report rather than a feed; see
      docs/decisions/0006). `Accept: text/csv`: the same rows for every clinic the caller may
      see, as CSV with a header row (the clinic count bounds it).
    * Answered from `clinic_daily_stats` (kept by the worker from outbox events, so a change
      shows after the worker has handled its event), on the read session (the replica when
      configured), under `analytics_statement_timeout_ms`: past it the query is cancelled and
      the answer is 503 `service_unavailable`.
    """
    timeout_ms = request.app.state.settings.analytics_statement_timeout_ms
    vary = {"Vary": "Accept"}
    report = service.Report(first=from_, last=to, clinic_id=clinic_id)
    if wants_csv(accept):
        # Read completely before the first byte: a timeout is still a clean 503, and the
        # session ends with the handler. The rows are then streamed as they are rendered.
        rows = await service.all_clinics(session, timeout_ms, principal, report)
        filename = f"clinic-analytics-{from_.isoformat()}-{to.isoformat()}.csv"

        async def lines() -> AsyncIterator[str]:
            # Async, so Starlette does not hand each line to a worker thread.
            for line in service.csv_lines(rows):
                yield line

        return StreamingResponse(
            lines(),
            media_type=CSV_MEDIA_TYPE,
            headers={**vary, "Content-Disposition": f'attachment; filename="{filename}"'},
        )
    items, next_cursor = await service.clinic_page(
        session, timeout_ms, principal, report, PageParams(limit=limit, cursor=cursor)
    )
    response.headers.update(vary)
    return ClinicAnalytics(from_=from_, to=to, items=items, next_cursor=next_cursor)
