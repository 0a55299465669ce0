"""Clinic analytics: the report, its CSV rendering, and keeping `clinic_daily_stats` exact."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics import repository
from app.analytics.schemas import CSV_COLUMNS, ClinicFigures
from app.auth.dependencies import Principal
from app.kit.errors import Forbidden, RangeTooLarge, ValidationFailed
from app.kit.pagination import PageParams, build_page, parse_uuid
from app.models import Role

# `from` and `to` are inclusive: at most 366 local dates (a leap year) in one report.
MAX_RANGE_DAYS = 366
# A rebuild statement covers one month of local dates: ~0.4 M appointments at 10 M.
REBUILD_STATEMENT_TIMEOUT_MS = 20_000
# A refresh waits this long for a rebuild chunk (two statements bounded as above) to finish.
LOCK_WAIT_MS = 50_000
REFRESH_STATEMENT_TIMEOUT_MS = 5_000  # beyond the lock wait: a refresh reads a few hundred rows


@dataclass(frozen=True)
class Report:
    first: date
    last: date
    clinic_id: uuid.UUID | None


def check_range(first: date, last: date) -> None:
    if last < first:
        raise ValidationFailed("`to` must not be before `from`", loc=("query", "to"))
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise RangeTooLarge(f"At most {MAX_RANGE_DAYS} days can be asked for at once.")


def _parse_name(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _staff_scope(principal: Principal) -> uuid.UUID | None:
    """The staff member whose clinic bounds the report, or None for an admin (all clinics)."""
    if principal.role is Role.ADMIN:
        return None
    if principal.role is Role.STAFF:
        return principal.user_id
    raise Forbidden("Clinic analytics are for staff and admins.")


async def _figures(
    session: AsyncSession,
    timeout_ms: int,
    principal: Principal,
    report: Report,
    *,
    after: tuple[str, uuid.UUID] | None,
    limit: int | None,
) -> list[ClinicFigures]:
    staff = _staff_scope(principal)
    check_range(report.first, report.last)
    # Inside the read transaction, so a runaway aggregate is cancelled (-> 503) and the
    # setting ends with the transaction instead of leaking to the pooled connection.
    await repository.set_local(session, statement_timeout=str(timeout_ms))
    rows = await repository.clinic_figures(
        session,
        first=report.first,
        last=report.last,
        staff_user_id=staff,
        clinic_id=report.clinic_id,
        after=after,
        limit=limit,
    )
    return [ClinicFigures.model_validate(row._mapping) for row in rows]


async def clinic_page(
    session: AsyncSession,
    timeout_ms: int,
    principal: Principal,
    report: Report,
    page: PageParams,
) -> tuple[list[ClinicFigures], str | None]:
    """One keyset page of the report, ordered by clinic name (then id)."""
    after = page.position(_parse_name, parse_uuid)
    rows = await _figures(session, timeout_ms, principal, report, after=after, limit=page.limit + 1)
    return build_page(rows, page.limit, lambda item: (item.clinic_name, item.clinic_id))


async def all_clinics(
    session: AsyncSession, timeout_ms: int, principal: Principal, report: Report
) -> list[ClinicFigures]:
    """Every clinic the caller may see (the CSV export): one row per clinic, so the clinic
    count bounds it, and one statement under the same timeout."""
    return await _figures(session, timeout_ms, principal, report, after=None, limit=None)


def _cell(value: object) -> object:
    # A name starting like a formula would run as one in a spreadsheet (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def csv_lines(items: Iterable[ClinicFigures]) -> Iterator[str]:
    """RFC 4180 CSV: a header row, then one row per clinic."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def line(values: Sequence[object]) -> str:
        writer.writerow(values)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield line(CSV_COLUMNS)
    for item in items:
        yield line([_cell(getattr(item, column)) for column in CSV_COLUMNS])


# --- Keeping clinic_daily_stats -----------------------------------------------------------


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


async def refresh_for_event(session: AsyncSession, payload: dict[str, Any]) -> int:
    """Recompute the days an `appointment.*` event touches: the appointment's day as it is
    now (re-read by id), and the days the payload names (`starts_at`, and `old_starts_at` of
    a reschedule). Exact and idempotent; returns the number of (clinic, day) rows refreshed."""
    try:
        appointment_id = uuid.UUID(str(payload["appointment_id"]))
    except (KeyError, ValueError):
        return 0
    instants: list[tuple[uuid.UUID, datetime]] = []
    try:
        clinic_id: uuid.UUID | None = uuid.UUID(str(payload["clinic_id"]))
    except (KeyError, ValueError):
        clinic_id = None
    if clinic_id is not None:
        for key in ("starts_at", "old_starts_at"):
            at = _instant(payload.get(key))
            if at is not None:
                instants.append((clinic_id, at))
    days = await repository.touched_days(session, [appointment_id], instants)
    # Waiting for a rebuild chunk's lock is part of a statement too: the connection's 5 s
    # statement timeout would cut the wait short, so it is raised to cover the lock wait.
    await repository.set_local(
        session,
        lock_timeout=str(LOCK_WAIT_MS),
        statement_timeout=str(LOCK_WAIT_MS + REFRESH_STATEMENT_TIMEOUT_MS),
    )
    await repository.refresh_days(session, days)
    return len(days)


def month_chunks(first: date, last: date) -> list[tuple[date, date]]:
    """`first`..`last` cut at month boundaries: one rebuild statement per piece."""
    chunks: list[tuple[date, date]] = []
    start = first
    while start <= last:
        next_month = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        end = min(last, next_month - timedelta(days=1))
        chunks.append((start, end))
        start = end + timedelta(days=1)
    return chunks


async def rebuild_extent(session: AsyncSession) -> tuple[date, date] | None:
    return await repository.extent(session)


async def rebuild_chunk(session: AsyncSession, first: date, last: date) -> int:
    """Replace one chunk's rows by a GROUP BY over `appointments`; rows written."""
    # A month's rows are a scan of much of `appointments`: the one statement that wants the
    # parallel workers Carebook's connections otherwise go without (PostgreSQL's default, 2).
    await repository.set_local(
        session,
        statement_timeout=str(REBUILD_STATEMENT_TIMEOUT_MS),
        lock_timeout=str(LOCK_WAIT_MS),
        max_parallel_workers_per_gather="2",
    )
    return await repository.rebuild_range(session, first, last)
