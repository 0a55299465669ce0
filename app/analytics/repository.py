"""SQL of clinic analytics: the report over `clinic_daily_stats` and the statements that keep it.

One definition of the figures, used by the incremental refresh and the rebuild alike (and by
the tests' oracle): an appointment counts for its clinic on the local date of `starts_at` in the
clinic's time zone, `(starts_at AT TIME ZONE clinics.timezone)::date`. `booked` counts every
appointment of that day whatever its status; `completed`, `cancelled` and `no_show` count those
in that status now (booked and checked-in visits are in `booked` only).

Both write paths recompute rows from `appointments` (never +1/-1 deltas), so a refresh that
runs twice, late or out of order writes the same rows. To find a local date's appointments
through the index on `(clinic_id, starts_at)`, the scan is bounded by the UTC window
`[day - 1, day + 2)` (every UTC offset lies within a day) and the exact local date is checked on
the rows of that range.

Concurrency: a refresh and the rebuild are serialised by advisory locks taken *before* their
`INSERT ... SELECT` statements, so under READ COMMITTED the writing statement's snapshot is
newer than every refresh of the same row that committed before it; the last writer of a row
has therefore seen every change whose event came before it, and an older snapshot can never
overwrite a newer count.

* refreshes take the rebuild lock shared, then one lock per (clinic, day) in a fixed order;
* a rebuild chunk takes the rebuild lock exclusively.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Float,
    Integer,
    TextClause,
    bindparam,
    cast,
    func,
    select,
    text,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit.db import AnyRow, AnySelect
from app.models import Clinic, ClinicDailyStat, User

# Advisory lock namespaces (the two-int4 key space): the rebuild, and (clinic, day) rows.
_REBUILD_LOCK = 0x43425201
_DAY_LOCK = 0x43425202


def _local_day(instant: str) -> str:
    """The local date of an instant in the zone of clinic `c`: the one definition of "day"."""
    return f"({instant} AT TIME ZONE c.timezone)::date"


_LOCAL_DAY = _local_day("a.starts_at")

_TOUCHED_DAYS = text(
    f"""
    SELECT DISTINCT p.clinic_id, {_local_day("p.at")} AS day
    FROM (
        SELECT u.clinic_id, u.at
        FROM unnest(CAST(:clinic_ids AS uuid[]), CAST(:instants AS timestamptz[]))
            AS u(clinic_id, at)
        UNION ALL
        SELECT a.clinic_id, a.starts_at FROM appointments a
        WHERE a.id = ANY(CAST(:appointment_ids AS uuid[]))
    ) AS p
    JOIN clinics c ON c.id = p.clinic_id
    """
)

_LOCK_REBUILD_SHARED = text(f"SELECT pg_advisory_xact_lock_shared({_REBUILD_LOCK}, 0)")
_LOCK_REBUILD = text(f"SELECT pg_advisory_xact_lock({_REBUILD_LOCK}, 0)")
# Sorted, so two refreshes of overlapping days take their locks in the same order (no deadlock).
_LOCK_DAYS = text(
    f"""
    SELECT count(pg_advisory_xact_lock({_DAY_LOCK}, k.key))
    FROM (
        SELECT DISTINCT hashtext(t.clinic_id::text || '/' || t.day::text) AS key
        FROM unnest(CAST(:clinic_ids AS uuid[]), CAST(:days AS date[])) AS t(clinic_id, day)
        ORDER BY 1
    ) AS k
    """
)

_COUNTS = """
    count(a.id) AS booked,
    count(a.id) FILTER (WHERE a.status = 'completed') AS completed,
    count(a.id) FILTER (WHERE a.status = 'cancelled') AS cancelled,
    count(a.id) FILTER (WHERE a.status = 'no_show') AS no_show
"""
_UPSERT = """
    ON CONFLICT (clinic_id, day) DO UPDATE SET
        booked = EXCLUDED.booked,
        completed = EXCLUDED.completed,
        cancelled = EXCLUDED.cancelled,
        no_show = EXCLUDED.no_show
"""

# Days left without appointments get a row of zeros (a LEFT JOIN), so a visit moved away or
# the last one of a day leaves no stale count behind.
_REFRESH_DAYS = text(
    f"""
    INSERT INTO clinic_daily_stats (clinic_id, day, booked, completed, cancelled, no_show)
    SELECT t.clinic_id, t.day, {_COUNTS}
    FROM (
        SELECT DISTINCT u.clinic_id, u.day
        FROM unnest(CAST(:clinic_ids AS uuid[]), CAST(:days AS date[])) AS u(clinic_id, day)
    ) AS t
    JOIN clinics c ON c.id = t.clinic_id
    LEFT JOIN appointments a
        ON a.clinic_id = t.clinic_id
        AND a.starts_at >= CAST(t.day - 1 AS timestamp) AT TIME ZONE 'UTC'
        AND a.starts_at < CAST(t.day + 2 AS timestamp) AT TIME ZONE 'UTC'
        AND {_LOCAL_DAY} = t.day
    GROUP BY t.clinic_id, t.day
    {_UPSERT}
    """
)

_DELETE_RANGE = text("DELETE FROM clinic_daily_stats WHERE day BETWEEN :first AND :last")
_REBUILD_RANGE = text(
    f"""
    INSERT INTO clinic_daily_stats (clinic_id, day, booked, completed, cancelled, no_show)
    SELECT a.clinic_id, {_LOCAL_DAY} AS day, {_COUNTS}
    FROM appointments a
    JOIN clinics c ON c.id = a.clinic_id
    WHERE a.starts_at >= CAST(CAST(:first AS date) - 1 AS timestamp) AT TIME ZONE 'UTC'
        AND a.starts_at < CAST(CAST(:last AS date) + 2 AS timestamp) AT TIME ZONE 'UTC'
        AND {_LOCAL_DAY} BETWEEN :first AND :last
    GROUP BY 1, 2
    """
)
# Every local date that may hold appointments or stats: the UTC extremes widened by a day
# (any zone's date is within a day of UTC's). Both ends are index lookups.
_EXTENT = text(
    """
    SELECT
        least(
            (SELECT CAST(min(starts_at) AS date) - 1 FROM appointments),
            (SELECT min(day) FROM clinic_daily_stats)
        ) AS first,
        greatest(
            (SELECT CAST(max(starts_at) AS date) + 1 FROM appointments),
            (SELECT max(day) FROM clinic_daily_stats)
        ) AS last
    """
)


@functools.cache
def _set_config(count: int) -> TextClause:
    return text("SELECT " + ", ".join(f"set_config(:n{i}, :v{i}, true)" for i in range(count)))


async def set_local(session: AsyncSession, **settings: str) -> None:
    """`SET LOCAL name = value` for each: this transaction only (reverted at its end)."""
    params = {}
    for i, (name, value) in enumerate(settings.items()):
        params[f"n{i}"], params[f"v{i}"] = name, value
    await session.execute(_set_config(len(settings)), params)


_stat = ClinicDailyStat.__table__.c
_clinic = Clinic.__table__.c
_users = User.__table__.c
_UUID = PG_UUID(as_uuid=True)


@functools.cache
def _figures_statement(*, staff: bool, clinic: bool, after: bool, limited: bool) -> AnySelect:
    """The report statement of one shape, built once (values are bound parameters)."""
    totals = (
        select(
            func.coalesce(func.sum(_stat.booked), 0).label("booked"),
            func.coalesce(func.sum(_stat.completed), 0).label("completed"),
            func.coalesce(func.sum(_stat.cancelled), 0).label("cancelled"),
            func.coalesce(func.sum(_stat.no_show), 0).label("no_show"),
        )
        .where(
            _stat.clinic_id == _clinic.id,
            _stat.day.between(
                bindparam("first", type_=_stat.day.type), bindparam("last", type_=_stat.day.type)
            ),
        )
        .lateral("totals")
    )
    seen = totals.c.completed + totals.c.no_show
    query = (
        select(
            _clinic.id.label("clinic_id"),
            _clinic.name.label("clinic_name"),
            totals.c.booked,
            totals.c.completed,
            totals.c.cancelled,
            totals.c.no_show,
            (cast(totals.c.no_show, Float) / type_coerce(func.nullif(seen, 0), Float)).label(
                "no_show_rate"
            ),
        )
        .select_from(Clinic.__table__)
        .join(totals, true())
        .order_by(_clinic.name, _clinic.id)
    )
    if staff:
        # Staff see their own clinic only, decided in SQL (no second round trip).
        own = (
            select(_users.clinic_id)
            .where(_users.id == bindparam("staff_user_id", type_=_UUID))
            .scalar_subquery()
        )
        query = query.where(_clinic.id == own)
    if clinic:
        query = query.where(_clinic.id == bindparam("clinic_id", type_=_UUID))
    if after:
        last = tuple_(
            bindparam("after_name", type_=_clinic.name.type),
            bindparam("after_id", type_=_UUID),
        )
        query = query.where(tuple_(_clinic.name, _clinic.id) > last)
    if limited:
        query = query.limit(bindparam("limit", type_=Integer))
    return query


async def clinic_figures(
    session: AsyncSession,
    *,
    first: date,
    last: date,
    staff_user_id: uuid.UUID | None,
    clinic_id: uuid.UUID | None,
    after: tuple[str, uuid.UUID] | None,
    limit: int | None,
) -> Sequence[AnyRow]:
    """Per clinic, the sums over `first`..`last` (inclusive), ordered by name then id.

    A LATERAL aggregate per clinic: only the clinics of the page are summed, each by a range
    scan of the primary key `(clinic_id, day)`. Clinics without rows report zeros.
    """
    query = _figures_statement(
        staff=staff_user_id is not None,
        clinic=clinic_id is not None,
        after=after is not None,
        limited=limit is not None,
    )
    params: dict[str, Any] = {"first": first, "last": last}
    if staff_user_id is not None:
        params["staff_user_id"] = staff_user_id
    if clinic_id is not None:
        params["clinic_id"] = clinic_id
    if after is not None:
        params["after_name"], params["after_id"] = after
    if limit is not None:
        params["limit"] = limit
    return (await session.execute(query, params)).all()


async def touched_days(
    session: AsyncSession,
    appointment_ids: Sequence[uuid.UUID],
    instants: Sequence[tuple[uuid.UUID, datetime]],
) -> list[tuple[uuid.UUID, date]]:
    """The (clinic, local day) pairs of the appointments as they are now and of the given
    (clinic, instant) pairs (where an event says they were)."""
    rows = await session.execute(
        _TOUCHED_DAYS,
        {
            "appointment_ids": list(appointment_ids),
            "clinic_ids": [clinic for clinic, _ in instants],
            "instants": [at for _, at in instants],
        },
    )
    return [(row.clinic_id, row.day) for row in rows]


async def refresh_days(session: AsyncSession, days: Sequence[tuple[uuid.UUID, date]]) -> None:
    """Recompute the rows of these (clinic, day) pairs from `appointments`, in one upsert."""
    if not days:
        return
    params = {"clinic_ids": [clinic for clinic, _ in days], "days": [day for _, day in days]}
    await session.execute(_LOCK_REBUILD_SHARED)
    await session.execute(_LOCK_DAYS, params)
    # A new statement, so a new snapshot: it sees every refresh that held these locks before.
    await session.execute(_REFRESH_DAYS, params)


async def extent(session: AsyncSession) -> tuple[date, date] | None:
    """The widest range of local dates that appointments or stats rows may fall on."""
    row = (await session.execute(_EXTENT)).one()
    if row.first is None or row.last is None:
        return None
    return row.first, row.last


async def rebuild_range(session: AsyncSession, first: date, last: date) -> int:
    """Replace the rows of `first`..`last` by a GROUP BY over `appointments`; rows written."""
    await session.execute(_LOCK_REBUILD)
    await session.execute(_DELETE_RANGE, {"first": first, "last": last})
    result = await session.execute(_REBUILD_RANGE, {"first": first, "last": last})
    return int(getattr(result, "rowcount", 0) or 0)
