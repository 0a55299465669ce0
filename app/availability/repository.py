"""Set-based slot computation (audit F2): one SQL statement, no per-slot or per-provider loops.

The statement expands each provider's weekly wall-clock rules over the requested local dates
with `generate_series`, turns wall-clock starts into instants in the provider's zone, and
anti-joins active appointments and time off. DST rules of the contract:

* a wall-clock start that does not exist (spring-forward gap) gives no slot: the instant it maps
  to does not map back to the same wall-clock time;
* an ambiguous one (fall-back fold) uses its first occurrence: of the two candidate instants
  (the start read with the offset of the day before, and PostgreSQL's own reading, which is
  the later one) the earlier that maps back is taken.

Appointments last at most a day (a CHECK constraint), which bounds the anti-join's index range.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit import sql
from app.kit.db import AnyRow

# Expands the providers of `chosen` (provider_id, tz, slot_minutes, ...) into `slots`.
_SLOTS = """
days AS (
    SELECT (CAST(:from_date AS date) + k) AS day
    FROM generate_series(0, CAST(:to_date AS date) - CAST(:from_date AS date)) AS k
),
grid AS (
    SELECT c.provider_id, c.tz, c.slot_minutes,
           d.day + r.start_time + make_interval(mins => n * c.slot_minutes) AS local_start
    FROM chosen c
    JOIN schedule_rules r ON r.provider_id = c.provider_id
    JOIN days d ON EXTRACT(ISODOW FROM d.day) = r.weekday
    CROSS JOIN LATERAL generate_series(
        0,
        CAST(EXTRACT(EPOCH FROM r.end_time - r.start_time) AS integer) / 60 / c.slot_minutes - 1
    ) AS n
),
-- MATERIALIZED, and `OFFSET 0` below: each wall-clock start is read in its zone once. Inlined,
-- PostgreSQL evaluates the readings again in every use (a dozen zone conversions per slot).
readings AS MATERIALIZED (
    SELECT g.provider_id, g.tz, g.slot_minutes, g.local_start, g.later,
           (g.local_start - (
               (g.later - interval '1 day') AT TIME ZONE g.tz
             - (g.later - interval '1 day') AT TIME ZONE 'UTC'
           )) AT TIME ZONE 'UTC' AS earlier
    FROM (
        SELECT provider_id, tz, slot_minutes, local_start, local_start AT TIME ZONE tz AS later
        FROM grid
        OFFSET 0
    ) AS g
),
resolved AS (
    SELECT provider_id, tz, slot_minutes,
           CASE
               WHEN earlier < later AND (earlier AT TIME ZONE tz) = local_start THEN earlier
               WHEN (later AT TIME ZONE tz) = local_start THEN later
           END AS starts_at
    FROM readings
),
-- MATERIALIZED: each slot's instant is computed once. Inlined, PostgreSQL re-evaluates the
-- DST resolution inside every anti-join probe (20 s instead of 50 ms for a search at 1 M
-- appointments; see docs/queries.md).
slots AS MATERIALIZED (
    SELECT provider_id, tz, starts_at, starts_at + make_interval(mins => slot_minutes) AS ends_at
    FROM resolved
    WHERE starts_at IS NOT NULL
)
"""

# `OFFSET 0` keeps each EXISTS a per-slot index probe. Under a generic plan the grid's size is
# unknown (a date series of unknown bounds counts as 1,000 rows), and PostgreSQL would turn a
# plain EXISTS into a hash anti-join over every active appointment of every provider: a 7-day
# search of 17 providers took 13 ms of PostgreSQL CPU that way and takes 6 ms as probes.
_TAKEN = """
EXISTS (
    SELECT 1 FROM appointments a
    WHERE a.provider_id = s.provider_id
      AND a.status IN ('booked', 'checked_in')
      AND a.starts_at < s.ends_at
      AND a.starts_at > s.starts_at - interval '1 day'
      AND a.ends_at > s.starts_at
      AND (CAST(:ignore_appointment_id AS uuid) IS NULL
           OR a.id <> CAST(:ignore_appointment_id AS uuid))
    OFFSET 0
)
"""

_OFF = """
EXISTS (
    SELECT 1 FROM time_off t
    WHERE t.provider_id = s.provider_id
      AND t.ends_at > s.starts_at
      AND t.starts_at < s.ends_at
    OFFSET 0
)
"""

_BOOKABLE_WINDOW = "s.starts_at >= :earliest AND s.starts_at < :latest"

_ONE_PROVIDER = (
    """
WITH chosen AS (
    SELECT p.user_id AS provider_id, p.timezone AS tz, p.slot_minutes
    FROM providers p
    WHERE p.user_id = :provider_id AND p.is_active
),
"""
    + _SLOTS
)

_FREE = f"""
free AS (
    SELECT s.provider_id, s.tz, s.starts_at, s.ends_at
    FROM slots s
    WHERE {_BOOKABLE_WINDOW} AND NOT {_TAKEN} AND NOT {_OFF}
)
"""

# One row per free slot, or a single row with NULL times when the provider has none; no row
# at all when the provider does not exist, so existence needs no second query.
FREE_SLOTS_OF_PROVIDER = text(
    _ONE_PROVIDER
    + ","
    + _FREE
    + """
SELECT c.tz, c.slot_minutes, f.starts_at, f.ends_at
FROM chosen c
LEFT JOIN free f ON f.provider_id = c.provider_id
ORDER BY f.starts_at
"""
)

SLOT_STATE = sql.Statement(
    text(
        _ONE_PROVIDER
        + f"""
SELECT s.starts_at, s.ends_at,
       ({_BOOKABLE_WINDOW}) AS bookable_time,
       {_OFF} AS time_off,
       {_TAKEN} AS taken
FROM slots s
WHERE s.starts_at = :start
"""
    )
)


def _local_iso(local: str, offset: str) -> str:
    """SQL rendering a local timestamp and its offset from UTC (in seconds) as Python's
    `datetime.isoformat()` does (`2026-03-29T09:00:00+02:00`; seconds in the offset only when
    it has some). The colons of the format are escaped: `text()` would read `:MI` as a
    parameter."""
    return f"""(
    to_char({local}, 'YYYY-MM-DD"T"HH24\\:MI\\:SS')
    || CASE WHEN {offset} < 0 THEN '-' ELSE '+' END
    || lpad(CAST(abs({offset}) / 3600 AS text), 2, '0') || ':'
    || lpad(CAST(abs({offset}) % 3600 / 60 AS text), 2, '0')
    || CASE WHEN {offset} % 60 <> 0
            THEN ':' || lpad(CAST(abs({offset}) % 60 AS text), 2, '0') ELSE '' END
)"""


# The free slots of each provider of `chosen` as the items of a JSON array (without the
# brackets), ordered by start: the response is assembled from these strings as they are, with
# no Python object per slot. The strings hold only digits, signs and fixed keys: no escaping.
# Each instant is converted to the provider's zone once (`OFFSET 0` keeps the subquery from
# being flattened, which would repeat the conversion in every use of its columns). `slots_json`
# is MATERIALIZED so that it is aggregated once, not again for each provider it is joined to.
_SLOTS_JSON = f"""
local_slots AS (
    SELECT provider_id, starts_at, local_start, local_end,
           CAST(EXTRACT(EPOCH FROM local_start - utc_start) AS integer) AS start_offset,
           CAST(EXTRACT(EPOCH FROM local_end - utc_end) AS integer) AS end_offset
    FROM (
        SELECT f.provider_id, f.starts_at,
               f.starts_at AT TIME ZONE f.tz AS local_start,
               f.ends_at AT TIME ZONE f.tz AS local_end,
               f.starts_at AT TIME ZONE 'UTC' AS utc_start,
               f.ends_at AT TIME ZONE 'UTC' AS utc_end
        FROM free f
        OFFSET 0
    ) AS converted
    OFFSET 0
),
slots_json AS MATERIALIZED (
    SELECT provider_id,
           string_agg(
               '{{"start":"' || {_local_iso("local_start", "start_offset")}
               || '","end":"' || {_local_iso("local_end", "end_offset")} || '"}}',
               ',' ORDER BY starts_at
           ) AS slots
    FROM local_slots
    GROUP BY provider_id
)
"""

# One row (zone, slot length, slots as JSON array items or NULL) or none without the provider.
FREE_SLOTS_JSON_OF_PROVIDER = sql.Statement(
    text(
        _ONE_PROVIDER
        + ","
        + _FREE
        + ","
        + _SLOTS_JSON
        + """
SELECT c.tz, c.slot_minutes, j.slots
FROM chosen c
LEFT JOIN slots_json j ON j.provider_id = c.provider_id
"""
    )
)


@functools.cache
def _search_statement(*, specialty: bool, clinic: bool, after: bool) -> sql.Statement:
    filters = ["p.is_active", "u.is_active"]
    if specialty:
        filters.append("lower(sp.name) = lower(:specialty)")
    if clinic:
        filters.append("p.clinic_id = :clinic_id")
    if after:
        filters.append("(u.full_name, p.user_id) > (:after_name, :after_id)")
    return sql.Statement(
        text(
            f"""
WITH chosen AS MATERIALIZED (
    SELECT p.user_id AS provider_id, p.timezone AS tz, p.slot_minutes,
           u.full_name, sp.name AS specialty, p.clinic_id, cl.name AS clinic_name,
           cl.timezone AS clinic_timezone
    FROM providers p
    JOIN users u ON u.id = p.user_id
    JOIN specialties sp ON sp.id = p.specialty_id
    JOIN clinics cl ON cl.id = p.clinic_id
    WHERE {" AND ".join(filters)}
    ORDER BY u.full_name, p.user_id
    LIMIT :page_size
),
{_SLOTS},
{_FREE},
{_SLOTS_JSON}
SELECT c.provider_id, c.full_name, c.specialty, c.clinic_id, c.clinic_name, c.clinic_timezone,
       c.tz, c.slot_minutes, j.slots
FROM chosen c
LEFT JOIN slots_json j ON j.provider_id = c.provider_id
ORDER BY c.full_name, c.provider_id
"""
        )
    )


@dataclass(frozen=True)
class Window:
    """Local dates to expand, and the instants between which a slot may start."""

    from_date: date
    to_date: date
    earliest: datetime
    latest: datetime

    def params(self) -> dict[str, Any]:
        return {
            "from_date": self.from_date,
            "to_date": self.to_date,
            "earliest": self.earliest,
            "latest": self.latest,
            "ignore_appointment_id": None,
        }


async def free_slots(
    session: AsyncSession, provider_id: uuid.UUID, window: Window
) -> Sequence[AnyRow]:
    result = await session.execute(
        FREE_SLOTS_OF_PROVIDER, {**window.params(), "provider_id": provider_id}
    )
    return result.all()


async def free_slots_json(
    executor: sql.Executor, provider_id: uuid.UUID, window: Window
) -> AnyRow | None:
    """The provider's zone, slot length and free slots as JSON array items (NULL when there
    are none), or None when there is no such active provider."""
    return await sql.fetchrow(
        executor, FREE_SLOTS_JSON_OF_PROVIDER, {**window.params(), "provider_id": provider_id}
    )


async def slot_state(
    session: AsyncSession,
    provider_id: uuid.UUID,
    start: datetime,
    window: Window,
    *,
    ignore_appointment_id: uuid.UUID | None = None,
) -> AnyRow | None:
    """The grid slot starting at `start` with its flags, or None when `start` is off the grid."""
    params = {
        **window.params(),
        "provider_id": provider_id,
        "start": start,
        "ignore_appointment_id": ignore_appointment_id,
    }
    return await sql.fetchrow(session, SLOT_STATE, params)


async def search(
    executor: sql.Executor,
    window: Window,
    *,
    specialty: str | None,
    clinic_id: uuid.UUID | None,
    after: tuple[str, uuid.UUID] | None,
    page_size: int,
) -> Sequence[AnyRow]:
    """A page of providers, ordered by name and id, each with its free slots as JSON array
    items (`slots`, NULL when it has none)."""
    statement = _search_statement(
        specialty=specialty is not None, clinic=clinic_id is not None, after=after is not None
    )
    params: dict[str, Any] = {**window.params(), "page_size": page_size}
    if specialty is not None:
        params["specialty"] = specialty
    if clinic_id is not None:
        params["clinic_id"] = clinic_id
    if after is not None:
        params["after_name"], params["after_id"] = after
    return await sql.fetch(executor, statement, params)
