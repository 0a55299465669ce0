"""The database's own floor: Carebook's availability statement and booking transaction run
directly through an asyncpg pool, in the runner's process, without HTTP, FastAPI, SQLAlchemy or
pydantic.

Same SQL (the availability statement the API runs, `FREE_SLOTS_JSON_OF_PROVIDER` with its slots
rendered as JSON in SQL, and the slot check, both imported from `app/availability/repository.py`
as compiled for asyncpg, not copied), same pool size as the API's (`db_pool_size` +
`db_max_overflow`) and the same per-connection settings (statement and lock timeouts, UTC), so
the ratio Carebook ÷ raw is what the API's own layers cost. The booking transaction is the
service's: lock the provider row (`FOR NO KEY UPDATE`), read the patient, check the slot with
`SLOT_STATE`, insert the appointment (the exclusion constraints stay the backstop: a violation
is a 409), write the outbox event, commit. What it leaves out is named in load/README.md (the
idempotency record and the response's view query).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]  # no stubs, no py.typed
import orjson

from app.availability.repository import FREE_SLOTS_JSON_OF_PROVIDER, SLOT_STATE
from app.kit.db import connection_settings
from app.models.base import new_id
from app.settings import Settings
from load.client import Call
from load.prepare import Booking, bind

_DEFAULTS = Settings.model_fields
POOL_SIZE = int(_DEFAULTS["db_pool_size"].default) + int(_DEFAULTS["db_max_overflow"].default)
MIN_NOTICE = timedelta(minutes=int(_DEFAULTS["min_notice_minutes"].default))
HORIZON = timedelta(days=int(_DEFAULTS["booking_horizon_days"].default))
# The API's own connection settings at their defaults (no environment read), under a name of
# their own in pg_stat_activity.
SERVER_SETTINGS = connection_settings(Settings.model_construct(), role="load-raw")

SLOT_STATE_SQL, SLOT_STATE_PARAMS = SLOT_STATE.sql, SLOT_STATE.names
_LOCK_PROVIDER = (
    "SELECT user_id, key, clinic_id, timezone FROM providers "
    "WHERE user_id = $1 AND is_active FOR NO KEY UPDATE"
)
_PATIENT = "SELECT id, key FROM users WHERE id = $1 AND role = 'patient' AND is_active"
_INSERT = (
    "INSERT INTO appointments (id, provider_id, provider_key, patient_id, patient_key, "
    "clinic_id, starts_at, ends_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
_OUTBOX = "INSERT INTO outbox (topic, payload) VALUES ('appointment.booked', $1::jsonb)"


async def _pool(dsn: str) -> Any:
    return await asyncpg.create_pool(
        dsn,
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        server_settings=SERVER_SETTINGS,
        timeout=10,
    )


class _Pooled:
    """An asyncpg pool of the API's size, opened for one run and closed after it."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str) -> Self:
        return cls(await _pool(dsn))

    async def close(self) -> None:
        await self.pool.close()


class AvailabilityQuery(_Pooled):
    """`FREE_SLOTS_JSON_OF_PROVIDER` for a list of parameter sets, round-robin."""

    def caller(self, params: Sequence[dict[str, Any]]) -> Call:
        statement = FREE_SLOTS_JSON_OF_PROVIDER
        bound = [bind(statement.names, p) for p in params]

        async def call(number: int) -> int:
            row = await self.pool.fetchrow(statement.sql, *bound[number % len(bound)])
            return 200 if row is not None else 404  # no row at all: no such provider

        return call


class BookingTransaction(_Pooled):
    """The booking service's transaction for prepared bookings, each sent once."""

    async def book(self, booking: Booking) -> int:
        try:
            return await self._book(booking)
        except asyncpg.exceptions.ExclusionViolationError:
            return 409  # the constraint caught what the lock should have (rolled back)

    async def _book(self, booking: Booking) -> int:
        slot = booking.slot
        now = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        async with self.pool.acquire() as connection, connection.transaction():
            provider = await connection.fetchrow(_LOCK_PROVIDER, slot.provider_id)
            if provider is None:
                return 404
            patient = await connection.fetchrow(_PATIENT, booking.patient.id)
            if patient is None:
                return 422
            local_day = slot.starts_at.astimezone(ZoneInfo(provider["timezone"])).date()
            values = {
                "provider_id": slot.provider_id,
                "from_date": local_day,
                "to_date": local_day,
                "earliest": now + MIN_NOTICE,
                "latest": now + HORIZON,
                "ignore_appointment_id": None,
                "start": slot.starts_at,
            }
            state = await connection.fetchrow(SLOT_STATE_SQL, *bind(SLOT_STATE_PARAMS, values))
            if state is None or not state["bookable_time"] or state["time_off"]:
                return 422
            if state["taken"]:
                return 409
            appointment_id = new_id()
            await connection.execute(
                _INSERT,
                appointment_id,
                slot.provider_id,
                provider["key"],
                patient["id"],
                patient["key"],
                provider["clinic_id"],
                state["starts_at"],
                state["ends_at"],
            )
            await connection.execute(
                _OUTBOX,
                orjson.dumps(
                    {
                        "appointment_id": str(appointment_id),
                        "provider_id": str(slot.provider_id),
                        "patient_id": str(patient["id"]),
                        "clinic_id": str(provider["clinic_id"]),
                        "starts_at": state["starts_at"].isoformat(),
                        "ends_at": state["ends_at"].isoformat(),
                    }
                ).decode(),
            )
        return 201

    def caller(self, bookings: Sequence[Booking]) -> Call:
        async def call(number: int) -> int:
            return await self.book(bookings[number])

        return call
