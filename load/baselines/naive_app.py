"""The audits' anti-patterns, implemented honestly, as one small FastAPI app served by the load
runner with Carebook's uvicorn command line (same flags, same worker count).

Honest means: what a competent developer writes when not thinking about the database, with
the indexes Carebook has, the same asyncpg pool size and timeouts, orjson responses of the same
shape, and no deliberate slowness. Only the technique differs:

* **N+1 listing** (audit F1): `GET /naive/v1/appointments` reads the page of 50 appointments,
  then for each row the provider (joined with its user and specialty: one query) and the
  patient (one query): 1 + 2 x 50 = 101 queries per page, as the audit counted. Who is asking
  is a query parameter (`patient_id`, `provider_id` or `clinic_id`): no JWT work.
* **Slots in Python** (audit F2): `GET /naive/v1/providers/{id}/availability` fetches the
  provider, its weekly rules, its time off and its active appointments in the window (each an
  indexed query), then walks days x rules x slot steps in Python and checks every candidate
  against every appointment and every time off (O(slots x bookings)). Same DST rules as the
  contract (a start in a gap gives no slot; a fold uses its first occurrence).
* **Check-then-insert booking** (audit F4): `POST /naive/v1/appointments` counts the
  overlapping active rows, and inserts when there are none, in autocommit, with no lock and no
  constraint. It writes to `appointments_naive`, a table this app creates at start-up in the
  database it is given (always a scratch copy: the runner never points it at the prepared
  database for this endpoint) as a copy of the future active appointments, with the same
  columns and a plain index but **without** the exclusion constraints. Never created by Alembic.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]  # no stubs, no py.typed
import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from load.baselines.raw_asyncpg import HORIZON, MIN_NOTICE, POOL_SIZE, SERVER_SETTINGS
from load.prepare import asyncpg_dsn

PREFIX = "/naive"
LISTING_PATH = f"{PREFIX}/v1/appointments"
BOOKING_PATH = f"{PREFIX}/v1/appointments"
TABLE = "appointments_naive"
ACTIVE = ("booked", "checked_in")

_CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (LIKE appointments INCLUDING DEFAULTS);
CREATE INDEX IF NOT EXISTS ix_{TABLE}_provider_starts ON {TABLE} (provider_id, starts_at);
"""
_FILL_TABLE = f"""
INSERT INTO {TABLE} SELECT * FROM appointments
WHERE status IN ('booked', 'checked_in') AND ends_at > now()
"""


def _json(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type="application/json")


# --- F1: N+1 -----------------------------------------------------------------------------------

_PAGE = """
SELECT id, provider_id, patient_id, clinic_id, starts_at, ends_at, status, video_status,
       cancel_reason, created_at, updated_at
FROM appointments WHERE {scope} = $1 AND ($2::timestamptz IS NULL OR starts_at >= $2)
ORDER BY starts_at, id LIMIT $3
"""
_PROVIDER = """
SELECT u.full_name, p.timezone, s.name AS specialty
FROM providers p JOIN users u ON u.id = p.user_id JOIN specialties s ON s.id = p.specialty_id
WHERE p.user_id = $1
"""
_PATIENT = "SELECT full_name FROM users WHERE id = $1"


async def list_appointments(
    request: Request,
    patient_id: str | None = None,
    provider_id: str | None = None,
    clinic_id: str | None = None,
    from_: datetime | None = Query(None, alias="from"),
    limit: int = Query(20, ge=1, le=100),
) -> Response:
    pool = request.app.state.pool
    scopes = {"patient_id": patient_id, "provider_id": provider_id, "clinic_id": clinic_id}
    scope, value = next(((k, v) for k, v in scopes.items() if v is not None), (None, None))
    if scope is None:
        return _json({"detail": "one of patient_id, provider_id, clinic_id"}, 422)
    async with pool.acquire() as connection:
        rows = await connection.fetch(_PAGE.format(scope=scope), value, from_, limit + 1)
        items = []
        for row in rows[:limit]:
            provider = await connection.fetchrow(_PROVIDER, row["provider_id"])
            patient = await connection.fetchrow(_PATIENT, row["patient_id"])
            zone = ZoneInfo(provider["timezone"])
            items.append(
                {
                    "id": str(row["id"]),
                    "provider_id": str(row["provider_id"]),
                    "patient_id": str(row["patient_id"]),
                    "clinic_id": str(row["clinic_id"]),
                    "start": row["starts_at"].astimezone(zone).isoformat(),
                    "end": row["ends_at"].astimezone(zone).isoformat(),
                    "status": row["status"],
                    "video_status": row["video_status"],
                    "cancel_reason": row["cancel_reason"],
                    "created_at": row["created_at"].isoformat(),
                    "updated_at": row["updated_at"].isoformat(),
                    "provider": {
                        "id": str(row["provider_id"]),
                        "full_name": provider["full_name"],
                        "specialty": provider["specialty"],
                    },
                    "patient": {"id": str(row["patient_id"]), "full_name": patient["full_name"]},
                }
            )
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = f"{last['starts_at'].isoformat()}|{last['id']}"
    return _json({"items": items, "next_cursor": cursor})


# --- F2: slots in Python loops -----------------------------------------------------------------


def _wall_clock(day: date, minute: int, zone: ZoneInfo) -> datetime | None:
    """The instant of a local wall-clock time; None in a DST gap; the first one in a fold."""
    local = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=zone)
    instant = local.astimezone(UTC)
    back = instant.astimezone(zone)
    if (back.hour, back.minute) != (local.hour, local.minute):
        return None
    return instant


def _rules_now() -> datetime:
    current = datetime.now(UTC)
    floor = current.replace(second=0, microsecond=0)
    return floor if floor == current else floor + timedelta(minutes=1)


async def availability(
    request: Request,
    provider_id: str,
    from_: date = Query(alias="from"),
    to: date = Query(),
) -> Response:
    if to < from_ or (to - from_).days > 30:
        return _json({"detail": "bad range"}, 422)
    pool = request.app.state.pool
    async with pool.acquire() as connection:
        provider = await connection.fetchrow(
            "SELECT user_id, timezone, slot_minutes FROM providers "
            "WHERE user_id = $1 AND is_active",
            provider_id,
        )
        if provider is None:
            return _json({"detail": "not found"}, 404)
        zone = ZoneInfo(provider["timezone"])
        window_start = datetime(from_.year, from_.month, from_.day, tzinfo=zone) - timedelta(days=1)
        window_end = datetime(to.year, to.month, to.day, tzinfo=zone) + timedelta(days=2)
        rules = await connection.fetch(
            "SELECT weekday, start_time, end_time FROM schedule_rules WHERE provider_id = $1",
            provider["user_id"],
        )
        time_off = await connection.fetch(
            "SELECT starts_at, ends_at FROM time_off "
            "WHERE provider_id = $1 AND ends_at > $2 AND starts_at < $3",
            provider["user_id"],
            window_start,
            window_end,
        )
        appointments = await connection.fetch(
            "SELECT starts_at, ends_at FROM appointments WHERE provider_id = $1 "
            "AND status IN ('booked', 'checked_in') AND starts_at < $3 AND ends_at > $2",
            provider["user_id"],
            window_start,
            window_end,
        )
    now = _rules_now()
    earliest, latest = now + MIN_NOTICE, now + HORIZON
    step = int(provider["slot_minutes"])
    length = timedelta(minutes=step)
    slots = []
    day = from_
    while day <= to:
        for rule in rules:
            if rule["weekday"] != day.isoweekday():
                continue
            minute = rule["start_time"].hour * 60 + rule["start_time"].minute
            end_minute = rule["end_time"].hour * 60 + rule["end_time"].minute
            while minute + step <= end_minute:
                start = _wall_clock(day, minute, zone)
                minute += step
                if start is None or not earliest <= start < latest:
                    continue
                end = start + length
                if any(a["starts_at"] < end and start < a["ends_at"] for a in appointments):
                    continue
                if any(t["starts_at"] < end and start < t["ends_at"] for t in time_off):
                    continue
                slots.append(start)
        day += timedelta(days=1)
    slots.sort()
    return _json(
        {
            "provider_id": provider_id,
            "timezone": provider["timezone"],
            "slot_minutes": step,
            "slots": [
                {
                    "start": s.astimezone(zone).isoformat(),
                    "end": (s + length).astimezone(zone).isoformat(),
                }
                for s in slots
            ],
        }
    )


# --- F4: check, then insert --------------------------------------------------------------------


class NaiveBookIn(BaseModel):
    provider_id: str
    patient_id: str
    start: datetime


async def book(request: Request, data: NaiveBookIn) -> Response:
    pool = request.app.state.pool
    async with pool.acquire() as connection:
        provider = await connection.fetchrow(
            "SELECT user_id, key, clinic_id, slot_minutes FROM providers "
            "WHERE user_id = $1 AND is_active",
            data.provider_id,
        )
        patient = await connection.fetchrow(
            "SELECT id, key FROM users WHERE id = $1 AND role = 'patient'", data.patient_id
        )
        if provider is None or patient is None:
            return _json({"detail": "not found"}, 404)
        starts_at = data.start
        ends_at = starts_at + timedelta(minutes=int(provider["slot_minutes"]))
        taken = await connection.fetchval(
            f"SELECT count(*) FROM {TABLE} WHERE provider_id = $1 "
            "AND status IN ('booked', 'checked_in') AND starts_at < $3 AND ends_at > $2",
            provider["user_id"],
            starts_at,
            ends_at,
        )
        if taken:
            return _json({"detail": "slot taken", "code": "slot_unavailable"}, 409)
        appointment_id = uuid.uuid4()
        await connection.execute(
            f"INSERT INTO {TABLE} (id, provider_id, provider_key, patient_id, patient_key, "
            "clinic_id, starts_at, ends_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            appointment_id,
            provider["user_id"],
            provider["key"],
            patient["id"],
            patient["key"],
            provider["clinic_id"],
            starts_at,
            ends_at,
        )
    return _json({"id": str(appointment_id), "status": "booked"}, 201)


# --- the app -----------------------------------------------------------------------------------


async def _prepare_table(pool: Any) -> None:
    """Create and fill `appointments_naive` once (a table lock serialises two workers)."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(8008)")
        exists = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE)
        if not exists:
            await connection.execute(_CREATE_TABLE)
            await connection.execute(_FILL_TABLE)


def create_app(database_url: str, *, naive_table: bool) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(
            asyncpg_dsn(database_url),
            min_size=1,
            max_size=POOL_SIZE,
            server_settings=SERVER_SETTINGS,
            timeout=10,
        )
        try:
            if naive_table:
                await _prepare_table(app.state.pool)
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(title="anti-pattern baselines", lifespan=lifespan)
    app.add_api_route(LISTING_PATH, list_appointments, methods=["GET"])
    app.add_api_route(f"{PREFIX}/v1/providers/{{provider_id}}/availability", availability)
    if naive_table:
        app.add_api_route(BOOKING_PATH, book, methods=["POST"])

    @app.get("/health/ready")
    async def ready() -> Response:
        return _json({"status": "ok"})

    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory load.baselines.naive_app:app_factory`: the database
    from `CAREBOOK_DATABASE_URL`; the booking endpoint (and its table) only when
    `CAREBOOK_LOAD_NAIVE_TABLE=1`, which the runner sets only on scratch copies."""
    return create_app(
        os.environ["CAREBOOK_DATABASE_URL"],
        naive_table=os.environ.get("CAREBOOK_LOAD_NAIVE_TABLE") == "1",
    )
