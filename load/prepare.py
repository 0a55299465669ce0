"""What the writing scenarios need before their run, read (or, in a scratch copy, written)
straight through asyncpg: scratch databases, free slots, accounts and their tokens.

Nothing here runs inside the measured window. Free slots are found with the API's own
availability statement (`FREE_SLOTS_OF_PROVIDER`, its text imported, not copied), so a slot the
runner picks is a slot the API would offer.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # no stubs, no py.typed
import orjson

from app.availability.repository import FREE_SLOTS_OF_PROVIDER
from app.seed.scale import EMAIL_DOMAIN, LOAD_PASSWORD
from load.client import build_request, fetch

LOGIN_CONCURRENCY = 4  # argon2 verifications in parallel: enough to hide the round trips
# Slots are picked from tomorrow to this many days ahead: inside the API's default booking
# rules (60 minutes' notice, a 90-day horizon), far enough from both ends to stay bookable
# for the whole run.
PICK_DAYS = 58
PICK_WINDOW_DAYS = 29  # two windows per provider, each within the API's 31-date limit
# A line comment or a quoted literal (both left alone), or a `:name` parameter that is not
# part of a `::` cast.
_NAMED = re.compile(r"--[^\n]*|'(?:[^']|'')*'|(?<![:\w]):([a-z_][a-z0-9_]*)(?!:)")


def asyncpg_dsn(database_url: str) -> str:
    """A libpq-style DSN for asyncpg from any SQLAlchemy PostgreSQL URL."""
    parts = urlsplit(database_url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"not a PostgreSQL URL: scheme {parts.scheme!r}")
    return urlunsplit(("postgresql", *parts[1:]))


def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """SQLAlchemy `text()` SQL with `:name` parameters -> asyncpg's `$n`, and the names in
    order (a name used twice keeps one number). `::type` casts, quoted text and `--` comments
    are left alone."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match[1]
        if name is None:
            return match[0]
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


FREE_SLOTS_SQL, FREE_SLOTS_PARAMS = positional(str(FREE_SLOTS_OF_PROVIDER))


def bind(names: Sequence[str], values: dict[str, Any]) -> list[Any]:
    return [values[name] for name in names]


async def connect(database_url: str) -> Any:
    return await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)


# --- scratch copies ----------------------------------------------------------------------------


def _with_database(database_url: str, name: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def database_name(database_url: str) -> str:
    return urlsplit(database_url).path.lstrip("/")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@asynccontextmanager
async def scratch_copy(database_url: str, suffix: str) -> AsyncIterator[str]:
    """A copy of the prepared database (`CREATE DATABASE ... TEMPLATE ... STRATEGY
    FILE_COPY`: a checkpoint and a file copy, seconds at 100 k appointments), dropped forcibly
    afterwards. Nothing may be connected to the prepared database while it is copied."""
    source = database_name(database_url)
    name = f"{source}_{suffix}"[:63]
    admin = await connect(_with_database(database_url, "postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
        await admin.execute(
            f"CREATE DATABASE {_ident(name)} TEMPLATE {_ident(source)} STRATEGY FILE_COPY"
        )
        try:
            yield _with_database(database_url, name)
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
    finally:
        await admin.close()


# --- accounts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: uuid.UUID
    email: str
    role: str
    clinic_id: uuid.UUID | None


async def load_accounts(connection: Any, role: str, limit: int) -> list[Account]:
    """The first `limit` accounts of a role that `carebook seed --scale` made (in key order)."""
    rows = await connection.fetch(
        "SELECT id, email, role, clinic_id FROM users "
        "WHERE role = $1 AND is_active AND email LIKE $2 ORDER BY key LIMIT $3",
        role,
        f"%@{EMAIL_DOMAIN}",
        limit,
    )
    if not rows:
        raise RuntimeError(
            f"the database has no {role} accounts @{EMAIL_DOMAIN}: this scenario needs a "
            "dataset made by `carebook seed --scale N`"
        )
    return [Account(r["id"], r["email"], r["role"], r["clinic_id"]) for r in rows]


async def log_in(port: int, accounts: Sequence[Account]) -> dict[uuid.UUID, str]:
    """Access tokens of `accounts` from `POST /v1/auth/token` (before the measured window)."""
    tokens: dict[uuid.UUID, str] = {}
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def one(account: Account) -> None:
        raw = build_request(
            "POST",
            "/v1/auth/token",
            port=port,
            json_body={"email": account.email, "password": LOAD_PASSWORD},
        )
        async with gate:
            response = await fetch(port, raw, limit_s=30.0)
        if response.status != 200:
            raise RuntimeError(f"login of {account.email} answered {response.status}")
        tokens[account.id] = str(orjson.loads(response.body)["access_token"])

    await asyncio.gather(*(one(account) for account in accounts))
    return tokens


async def forget_logins(database_url: str, user_ids: Sequence[uuid.UUID], since: datetime) -> int:
    """Delete the refresh tokens the runner's logins created: the prepared database is left
    as it was by the scenarios that only read."""
    connection = await connect(database_url)
    try:
        status = await connection.execute(
            "DELETE FROM refresh_tokens WHERE user_id = ANY($1::uuid[]) AND created_at >= $2",
            list(user_ids),
            since,
        )
    finally:
        await connection.close()
    return int(str(status).rsplit(" ", 1)[-1])


async def database_now(database_url: str) -> datetime:
    connection = await connect(database_url)
    try:
        now: datetime = await connection.fetchval("SELECT now()")
    finally:
        await connection.close()
    return now


# --- slots and appointments --------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    provider_id: uuid.UUID
    starts_at: datetime
    ends_at: datetime


Intervals = dict[uuid.UUID, list[tuple[datetime, datetime]]]  # busy times by patient


@dataclass(frozen=True)
class Booking:
    slot: Slot
    patient: Account


async def free_slots(connection: Any, provider_ids: Sequence[uuid.UUID]) -> list[Slot]:
    """Every free slot of the providers from tomorrow to `PICK_DAYS` ahead (UTC dates)."""
    now = datetime.now(UTC)
    first = now.date() + timedelta(days=1)
    found: list[Slot] = []
    for provider_id in provider_ids:
        for offset in range(0, PICK_DAYS, PICK_WINDOW_DAYS):
            from_date = first + timedelta(days=offset)
            to_date = from_date + timedelta(days=PICK_WINDOW_DAYS - 1)
            values = {
                "provider_id": provider_id,
                "from_date": from_date,
                "to_date": to_date,
                "earliest": now + timedelta(hours=12),
                "latest": now + timedelta(days=PICK_DAYS + 1),
                "ignore_appointment_id": None,
            }
            rows = await connection.fetch(FREE_SLOTS_SQL, *bind(FREE_SLOTS_PARAMS, values))
            found.extend(
                Slot(provider_id, r["starts_at"], r["ends_at"])
                for r in rows
                if r["starts_at"] is not None
            )
    return found


async def active_intervals(connection: Any, patient_ids: Sequence[uuid.UUID]) -> Intervals:
    """The patients' active visits from now on (a patient cannot hold two that overlap)."""
    rows = await connection.fetch(
        "SELECT patient_id, starts_at, ends_at FROM appointments "
        "WHERE patient_id = ANY($1::uuid[]) AND status IN ('booked', 'checked_in') "
        "AND ends_at > now()",
        list(patient_ids),
    )
    intervals: dict[uuid.UUID, list[tuple[datetime, datetime]]] = {p: [] for p in patient_ids}
    for row in rows:
        intervals[row["patient_id"]].append((row["starts_at"], row["ends_at"]))
    return intervals


def _overlaps(busy: Sequence[tuple[datetime, datetime]], slot: Slot) -> bool:
    return any(start < slot.ends_at and slot.starts_at < end for start, end in busy)


def assign(
    slots: Sequence[Slot],
    patients: Sequence[Account],
    intervals: Intervals,
    count: int,
    seed: int,
) -> list[Booking]:
    """Up to `count` bookings of distinct slots (a seeded sample), patients dealt round-robin,
    skipping a patient who is busy at that time, so no booking can collide with another or
    with what the patients hold already."""
    chosen = list(slots)
    random.Random(seed).shuffle(chosen)  # noqa: S311 - a sample, not a secret
    busy = {p.id: list(intervals.get(p.id, ())) for p in patients}
    bookings: list[Booking] = []
    turn = 0
    for slot in chosen:
        if len(bookings) >= count:
            break
        for step in range(len(patients)):
            patient = patients[(turn + step) % len(patients)]
            if not _overlaps(busy[patient.id], slot):
                busy[patient.id].append((slot.starts_at, slot.ends_at))
                bookings.append(Booking(slot, patient))
                turn = (turn + step + 1) % len(patients)
                break
    return bookings


def contended_slots(
    slots: Sequence[Slot],
    patients: Sequence[Account],
    intervals: Intervals,
    count: int,
    seed: int,
) -> list[Slot]:
    """`count` free slots (of different providers where possible) at which none of
    `patients` is busy: every one of them could book it, only one may."""
    chosen = list(slots)
    random.Random(seed).shuffle(chosen)  # noqa: S311 - a sample, not a secret
    busy = [interval for p in patients for interval in intervals.get(p.id, ())]
    picked: list[Slot] = []
    used_providers: set[uuid.UUID] = set()
    for repeat_providers in (False, True):
        for slot in chosen:
            if len(picked) >= count:
                return picked
            if slot in picked or (slot.provider_id in used_providers and not repeat_providers):
                continue
            if not _overlaps(busy, slot):
                picked.append(slot)
                used_providers.add(slot.provider_id)
    return picked


async def booked_appointments(
    connection: Any, provider_ids: Sequence[uuid.UUID], limit: int
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Future booked visits of the providers, (id, clinic_id), for cancellations."""
    rows = await connection.fetch(
        "SELECT id, clinic_id FROM appointments WHERE provider_id = ANY($1::uuid[]) "
        "AND status = 'booked' AND starts_at > now() + interval '1 day' "
        "ORDER BY starts_at, id LIMIT $2",
        list(provider_ids),
        limit,
    )
    return [(r["id"], r["clinic_id"]) for r in rows]


async def ensure_records(
    connection: Any, patient_ids: Sequence[uuid.UUID], per_patient: int, uploader: uuid.UUID
) -> int:
    """Give each patient `per_patient` medical-record rows if they have none (the scale seed
    makes none); returns the rows added. Only ever run on a scratch copy."""
    have = {
        r["patient_id"]
        for r in await connection.fetch(
            "SELECT DISTINCT patient_id FROM medical_records WHERE patient_id = ANY($1::uuid[])",
            list(patient_ids),
        )
    }
    kinds = ("lab_result", "referral", "imaging", "prescription", "visit_note")
    rows = []
    base = datetime.now(UTC) - timedelta(days=365)
    for patient_id in patient_ids:
        if patient_id in have:
            continue
        for n in range(per_patient):
            kind = kinds[n % len(kinds)]
            record_id = uuid.uuid4()
            rows.append(
                (
                    record_id,
                    patient_id,
                    uploader,
                    kind,
                    f"{kind.replace('_', ' ').title()} {n + 1}",
                    # The object storage's key format (`record_key` of the storage adapter).
                    f"patients/{patient_id}/{record_id}",
                    "application/pdf",
                    50_000 + 1_000 * n,
                    base + timedelta(days=7 * n),
                )
            )
    if rows:
        await connection.copy_records_to_table(
            "medical_records",
            records=rows,
            columns=[
                "id",
                "patient_id",
                "uploaded_by",
                "record_type",
                "title",
                "storage_key",
                "content_type",
                "size_bytes",
                "uploaded_at",
            ],
        )
    return len(rows)


def dates_back(today: date, days: int) -> tuple[date, date]:
    return today - timedelta(days=days - 1), today
