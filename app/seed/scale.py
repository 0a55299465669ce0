"""Benchmark datasets of a given size, loaded with COPY (`carebook seed --scale N`).

For N appointments the dataset has

* clamp(N // 200_000, 2, 50) clinics, each in one of four IANA zones;
* the eight specialties of `SPECIALTIES` (General Practice the most common);
* about 20 providers per clinic (more only when N would fill their calendars beyond
  `MAX_OCCUPANCY`), each with a weekly schedule in local wall-clock time and a slot length
  that suits the specialty; most work in their clinic's zone, some remotely in another;
* N // 10 patients (at least one per provider with appointments), an admin and one staff
  member per clinic; every account has the password `LOAD_PASSWORD`;
* exactly N appointments on the providers' slot grids (slot starts aligned to `slot_minutes`
  in local time, on working days only), from `HISTORY_DAYS` ago to `FUTURE_DAYS` ahead: the
  past almost as full as a busy practice, the next weeks filling up, the far future sparse.
  Past visits are completed (~85 %), cancelled (~10 %) or no-shows (~5 %) with their video
  room ready; future ones are booked (~90 %) or cancelled, their video room pending.

No exclusion constraint can be violated, by construction: every provider has a pool of
patients of its own and never uses a slot twice, and the slots of one provider never overlap.
The recreated constraints check it anyway.

Reproducible: the rows, ids and password hash included, are a function of the random seed, N
and the UTC date of the run ("today"); ids are UUIDv7 made from the row's creation time and the
seeded generator. Identity keys (`users.key`, `providers.key`) come from the database, so they
match between runs into fresh databases.

Everything is loaded in one transaction with COPY (`copy_records_to_table`) in batches. The
appointments' secondary indexes and both exclusion constraints are dropped first and rebuilt
afterwards from their exact catalog definitions (what `pg_dump` would emit), which is much faster
than maintaining them row by row; a violation would fail the rebuild and roll everything back.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time as clock
import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from argon2 import PasswordHasher, Type
from sqlalchemy import Table, pool
from sqlalchemy.ext.asyncio import create_async_engine

from app.kit.db import async_url
from app.models import Appointment, Base, Clinic, Provider, ScheduleRule, Specialty, User
from app.seed.errors import SeedError
from app.seed.progress import ConsoleProgress, Counter, Progress
from app.settings import Settings

LOAD_PASSWORD = "carebook-load"  # noqa: S105 - the load runner logs in with it on purpose
EMAIL_DOMAIN = "load.example.com"
ADMIN_EMAIL = f"admin@{EMAIL_DOMAIN}"

HISTORY_DAYS = 730  # appointments start this many days before today ...
FUTURE_DAYS = 80  # ... and end this many days after it
PROVIDERS_PER_CLINIC = 20
MAX_OCCUPANCY = 0.8  # more providers per clinic when N would fill more of the slot grid
BATCH_ROWS = 50_000

ZONES = ("Europe/London", "America/New_York", "America/Chicago", "Europe/Berlin")
CITIES = {
    "Europe/London": ("London", "Leeds", "Bristol", "Manchester", "Glasgow"),
    "America/New_York": ("New York", "Boston", "Philadelphia", "Atlanta", "Miami"),
    "America/Chicago": ("Chicago", "Houston", "Dallas", "Minneapolis", "St. Louis"),
    "Europe/Berlin": ("Berlin", "Hamburg", "Munich", "Cologne", "Frankfurt"),
}
CLINIC_KINDS = ("Health Centre", "Medical Group", "Family Practice", "Telehealth", "Clinic")
REMOTE_SHARE = 0.15  # providers who work from another zone than their clinic's

# name, relative frequency among providers, slot lengths in minutes
SPECIALTIES: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("General Practice", 6, (15,)),
    ("Dermatology", 2, (15, 20)),
    ("Pediatrics", 2, (15, 20)),
    ("Cardiology", 2, (20, 30)),
    ("Orthopedics", 2, (20,)),
    ("Gynecology", 2, (20, 30)),
    ("Neurology", 1, (30,)),
    ("Psychotherapy", 2, (45, 50)),
)

Rule = tuple[int, time, time]  # ISO weekday, local start, local end


def _rules(days: Sequence[int], *spans: tuple[str, str]) -> tuple[Rule, ...]:
    return tuple(
        (day, time.fromisoformat(start), time.fromisoformat(end))
        for day in days
        for start, end in spans
    )


WEEKDAYS = (1, 2, 3, 4, 5)
# Weekly templates, all inside 07:00-20:00 local time (no DST transition happens then).
TEMPLATES: tuple[tuple[Rule, ...], ...] = (
    _rules(WEEKDAYS, ("08:00", "12:00"), ("13:00", "17:00")),
    _rules(WEEKDAYS, ("09:00", "17:30")),
    _rules((1, 2, 3, 4), ("07:30", "15:30")) + _rules((5,), ("07:30", "12:30")),
    _rules((2, 3, 4, 5), ("12:00", "20:00")) + _rules((6,), ("09:00", "13:00")),
    _rules((1, 2, 3, 4), ("08:00", "13:00"), ("14:00", "19:00")),
)

FIRST_NAMES = (
    "Olivia", "Noah", "Amelia", "Liam", "Sofia", "Ethan", "Hana", "Lucas", "Grace", "Mateo",
    "Emma", "Oliver", "Mia", "Elias", "Ava", "Leon", "Isla", "Jonas", "Chloe", "Samuel",
    "Aisha", "David", "Freya", "Omar", "Lena", "Jacob", "Nora", "Ben", "Zoe", "Arjun",
    "Clara", "Felix", "Maya", "Hugo", "Ella", "Theo", "Ruby", "Adam", "Ines", "Kai",
)  # fmt: skip
LAST_NAMES = (
    "Adams", "Baker", "Clarke", "Davies", "Evans", "Foster", "Garcia", "Hughes", "Ito",
    "Jensen", "Khan", "Lopez", "Müller", "Nguyen", "Owens", "Patel", "Quinn", "Rossi",
    "Schmidt", "Taylor", "Usman", "Vogel", "Walker", "Xu", "Young", "Zimmermann", "Brown",
    "Novak", "Fischer", "Martin", "Wright", "Kowalski", "Silva", "Murphy", "Becker", "Cohen",
)  # fmt: skip
CANCEL_REASONS = (
    "Patient request",
    "Feeling better",
    "Schedule conflict",
    "Provider unavailable",
    "Rebooked online",
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY = 86_400


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def copy_columns(model: type[Base]) -> tuple[str, ...]:
    """The columns COPY fills, in the table's order: all but the identity keys the database
    assigns. Every row tuple below is built in this order."""
    return tuple(c.name for c in _table(model).columns if c.identity is None)


@dataclass(frozen=True)
class ScalePlan:
    """How many of each a dataset of `appointments` appointments has (before slot capacity)."""

    appointments: int
    clinics: int
    providers_per_clinic: int
    patients: int

    @property
    def providers(self) -> int:
        return self.clinics * self.providers_per_clinic

    @classmethod
    def of(cls, appointments: int) -> ScalePlan:
        if appointments < 1:
            raise ValueError("a benchmark dataset needs at least one appointment")
        clinics = min(max(appointments // 200_000, 2), 50)
        needed = math.ceil(appointments / (clinics * MAX_OCCUPANCY * _expected_capacity()))
        return cls(
            appointments=appointments,
            clinics=clinics,
            providers_per_clinic=max(PROVIDERS_PER_CLINIC, needed),
            # At least one per provider, so that every provider can have a pool of its own.
            patients=max(appointments // 10, 1),
        )


@dataclass(frozen=True)
class ScaleSummary:
    plan: ScalePlan
    clinics: int
    specialties: int
    providers: int
    schedule_rules: int
    patients: int
    staff: int
    appointments: int
    seconds: float
    today: date
    random_seed: int

    def logins(self) -> list[str]:
        return [
            f"Every account of this dataset uses the password '{LOAD_PASSWORD}':",
            f"  admin     {ADMIN_EMAIL}",
            f"  staff     {_staff_email(1)} … {_staff_email(self.clinics)}",
            f"  provider  {_provider_email(1)} … {_provider_email(self.providers)}",
            f"  patient   {_patient_email(1)} … {_patient_email(self.patients)}",
        ]


def _staff_email(n: int) -> str:
    return f"staff{n:02d}@{EMAIL_DOMAIN}"


def _provider_email(n: int) -> str:
    return f"provider{n:04d}@{EMAIL_DOMAIN}"


def _patient_email(n: int) -> str:
    return f"patient{n:06d}@{EMAIL_DOMAIN}"


def _minutes(t: time) -> int:
    return t.hour * 60 + t.minute


def _weekly_slots(rules: Sequence[Rule], slot_minutes: int) -> int:
    return sum((_minutes(end) - _minutes(start)) // slot_minutes for _, start, end in rules)


def _expected_capacity() -> float:
    """Expected slots per provider over the whole period (no randomness: plans are exact)."""
    weight = sum(w for _, w, _ in SPECIALTIES)
    weekly = 0.0
    for _, w, slot_options in SPECIALTIES:
        for minutes in slot_options:
            mean = sum(_weekly_slots(t, minutes) for t in TEMPLATES) / len(TEMPLATES)
            weekly += w / weight / len(slot_options) * mean
    return weekly * (HISTORY_DAYS + FUTURE_DAYS) / 7


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` in proportion to `weights` (largest remainder; exact and deterministic)."""
    whole = sum(weights)
    if whole == 0:
        return [0] * len(weights)
    quotas = [total * w for w in weights]
    shares = [q // whole for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] % whole), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


class _Random(random.Random):
    """The seeded generator of a dataset, with the id and name helpers built on it."""

    def uuid7(self, at_seconds: float) -> uuid.UUID:
        """A UUIDv7 of a given instant: 48 bits of Unix milliseconds, then 74 seeded bits."""
        millis = int(at_seconds * 1000) & ((1 << 48) - 1)
        bits = self.getrandbits(74)
        value = (
            millis << 80 | 0x7 << 76 | (bits >> 62) << 64 | 0b10 << 62 | (bits & ((1 << 62) - 1))
        )
        return uuid.UUID(int=value)

    def person(self) -> str:
        return f"{self.choice(FIRST_NAMES)} {self.choice(LAST_NAMES)}"


def _at(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def slot_grid(
    rules: Sequence[Rule], zone: str, slot_minutes: int, first_day: date, last_day: date
) -> array[int]:
    """Start instants (Unix seconds, ascending) of a provider's slots between two local dates.

    The contract's grid: slots start at each rule's start and step by `slot_minutes` while the
    whole slot fits before the rule's end; a wall-clock start that does not exist gives no slot;
    an ambiguous one uses its first occurrence (Python's fold=0). A slot that would overlap the
    previous one (only possible right after a DST gap) is left out.
    """
    tz = ZoneInfo(zone)
    step = slot_minutes * 60
    by_weekday: dict[int, list[tuple[int, int]]] = {}
    for weekday, start, end in sorted(rules, key=lambda r: (r[0], r[1])):
        count = (_minutes(end) - _minutes(start)) // slot_minutes
        if count > 0:
            by_weekday.setdefault(weekday, []).append((_minutes(start), count))
    starts: array[int] = array("q")
    last_end = -(1 << 62)

    def instant(day: date, minute: int) -> int | None:
        local = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=tz)
        seconds = int(local.timestamp())
        back = datetime.fromtimestamp(seconds, tz)
        same = (back.hour, back.minute, back.date()) == (local.hour, local.minute, day)
        return seconds if same else None

    for ordinal in range(first_day.toordinal(), last_day.toordinal() + 1):
        day = date.fromordinal(ordinal)
        for first_minute, count in by_weekday.get(day.isoweekday(), ()):
            last_minute = first_minute + (count - 1) * slot_minutes
            first, last = instant(day, first_minute), instant(day, last_minute)
            if first is not None and last is not None and last - first == (count - 1) * step:
                candidates: Sequence[int] = range(first, last + 1, step)
            else:  # a DST change inside the shift: slot by slot
                found = (instant(day, first_minute + k * slot_minutes) for k in range(count))
                candidates = [s for s in found if s is not None]
            for seconds in candidates:
                if seconds >= last_end:
                    starts.append(seconds)
                    last_end = seconds + step
    return starts


@dataclass
class _Provider:
    number: int
    user_id: uuid.UUID
    clinic_id: uuid.UUID
    specialty: int
    zone: str
    slot_minutes: int
    rules: tuple[Rule, ...]
    slots: array[int]
    appointments: int = 0
    first_patient: int = 0  # index into the patient list
    patients: int = 0


@dataclass
class _Dataset:
    today: date
    anchor: int  # today 00:00 UTC, Unix seconds: before it is the past
    password_hash: str
    clinics: list[tuple[Any, ...]]
    specialties: list[tuple[uuid.UUID, str]]
    users: list[tuple[Any, ...]]
    providers: list[_Provider]
    provider_rows: list[tuple[Any, ...]]
    rule_rows: list[tuple[Any, ...]]
    patient_ids: list[uuid.UUID]
    staff: int


def _password_hash(settings: Settings, rng: _Random) -> str:
    """One argon2id hash shared by every account, with the app's parameters and a seeded salt."""
    hasher = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        type=Type.ID,
    )
    return hasher.hash(LOAD_PASSWORD, salt=rng.randbytes(16))


def _build(settings: Settings, plan: ScalePlan, rng: _Random, today: date) -> _Dataset:
    """Everything but the appointments, in memory (draws from `rng` in a fixed order)."""
    anchor = int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp())
    opened = anchor - (HISTORY_DAYS + 400) * _DAY
    password_hash = _password_hash(settings, rng)

    clinics: list[tuple[Any, ...]] = []
    for n in range(1, plan.clinics + 1):
        zone = ZONES[(n - 1) % len(ZONES)]
        city = CITIES[zone][(n - 1) // len(ZONES) % len(CITIES[zone])]
        created = opened + rng.randrange(30 * _DAY)
        name = f"{city} {CLINIC_KINDS[(n - 1) % len(CLINIC_KINDS)]} {n:02d}"
        clinics.append((rng.uuid7(created), name, zone, _at(created)))

    specialties = [(rng.uuid7(opened), name) for name, _, _ in SPECIALTIES]
    weights = [w for _, w, _ in SPECIALTIES]

    users: list[tuple[Any, ...]] = []

    def user(created: int, email: str, name: str, role: str, clinic: Any) -> uuid.UUID:
        user_id = rng.uuid7(created)
        at = _at(created)
        users.append((user_id, email, password_hash, name, role, clinic, True, at, at))
        return user_id

    user(opened, ADMIN_EMAIL, "Load Administrator", "admin", None)
    for n, clinic in enumerate(clinics, start=1):
        user(opened + _DAY, _staff_email(n), f"{clinic[1]} Front Desk", "staff", clinic[0])

    first_day = today - timedelta(days=HISTORY_DAYS)
    last_day = today + timedelta(days=FUTURE_DAYS - 1)
    providers: list[_Provider] = []
    provider_rows: list[tuple[Any, ...]] = []
    rule_rows: list[tuple[Any, ...]] = []
    for clinic_id, clinic_name, clinic_zone, _ in clinics:
        for _ in range(plan.providers_per_clinic):
            number = len(providers) + 1
            specialty = rng.choices(range(len(SPECIALTIES)), weights)[0]
            name, _, slot_options = SPECIALTIES[specialty]
            slot_minutes = rng.choice(slot_options)
            zone = clinic_zone if rng.random() >= REMOTE_SHARE else rng.choice(ZONES)
            rules = rng.choice(TEMPLATES)
            created = opened + rng.randrange(60 * _DAY)
            user_id = user(
                created, _provider_email(number), f"Dr. {rng.person()}", "provider", None
            )
            bio = f"{name} at {clinic_name}."
            specialty_id, at = specialties[specialty][0], _at(created)
            provider_rows.append(
                (user_id, clinic_id, specialty_id, bio, zone, slot_minutes, True, at, at)
            )
            rule_rows.extend((rng.uuid7(created), user_id, *rule) for rule in rules)
            grid = slot_grid(rules, zone, slot_minutes, first_day, last_day)
            providers.append(
                _Provider(number, user_id, clinic_id, specialty, zone, slot_minutes, rules, grid)
            )

    capacity = sum(len(p.slots) for p in providers)
    if capacity < plan.appointments:  # pragma: no cover - the plan sizes providers for it
        raise RuntimeError(f"{plan.appointments} appointments do not fit {capacity} slots")
    shares = _apportion(plan.appointments, [len(p.slots) for p in providers])
    for provider, share in zip(providers, shares, strict=True):
        provider.appointments = share

    # Every provider with appointments gets a pool of patients of its own (>= 1).
    busy = [p for p in providers if p.appointments > 0]
    patients = max(plan.patients, len(busy))
    pools = _apportion(patients - len(busy), [p.appointments for p in busy])
    patient_ids: list[uuid.UUID] = []
    for provider, extra in zip(busy, pools, strict=True):
        provider.first_patient, provider.patients = len(patient_ids), 1 + extra
        for _ in range(provider.patients):
            number = len(patient_ids) + 1
            created = anchor - HISTORY_DAYS * _DAY - rng.randrange(365 * _DAY)
            patient_ids.append(user(created, _patient_email(number), rng.person(), "patient", None))

    return _Dataset(
        today=today,
        anchor=anchor,
        password_hash=password_hash,
        clinics=clinics,
        specialties=specialties,
        users=users,
        providers=providers,
        provider_rows=provider_rows,
        rule_rows=rule_rows,
        patient_ids=patient_ids,
        staff=len(clinics),
    )


def _future_weight(days_ahead: float) -> float:
    """How much a future slot is wanted relative to a past one: the next weeks fill up first."""
    return max(0.08, 1.0 - days_ahead / 70.0)


def _chosen_slots(provider: _Provider, anchor: int, rng: _Random) -> list[int]:
    """`provider.appointments` distinct slots, weighted (Efraimidis-Spirakis sampling)."""
    slots = provider.slots
    past = bisect.bisect_left(slots, anchor)
    keys = [rng.random() for _ in range(past)]
    for seconds in slots[past:]:
        keys.append(rng.random() ** (1.0 / _future_weight((seconds - anchor) / _DAY)))
    order = sorted(range(len(slots)), key=keys.__getitem__, reverse=True)
    return [slots[i] for i in sorted(order[: provider.appointments])]


def _appointments(
    data: _Dataset,
    rng: _Random,
    provider_keys: dict[uuid.UUID, int],
    user_keys: dict[uuid.UUID, int],
) -> Iterator[tuple[Any, ...]]:
    """The appointment rows, provider by provider, each provider's in time order."""
    anchor = data.anchor
    for provider in data.providers:
        if provider.appointments == 0:
            continue
        provider_key = provider_keys[provider.user_id]
        length = provider.slot_minutes * 60
        first = provider.first_patient
        patients = data.patient_ids[first : first + provider.patients]
        for starts in _chosen_slots(provider, anchor, rng):
            ends = starts + length
            patient_id = patients[rng.randrange(len(patients))]
            lead = min(int(rng.expovariate(1.0 / (12 * _DAY))), 120 * _DAY) + 3600
            created = starts - lead
            roll = rng.random()
            reason = None
            version = 2
            if starts < anchor:
                video, room = "ready", True
                if roll < 0.10:
                    status = "cancelled"
                    reason = rng.choice(CANCEL_REASONS)
                    updated = created + int((starts - created) * rng.random())
                else:
                    status = "no_show" if roll < 0.15 else "completed"
                    updated = min(ends + rng.randrange(3600), anchor)
            else:
                video, room = "pending", False
                if created > anchor - 60:
                    created = anchor - 60 - rng.randrange(30 * _DAY)
                if roll < 0.10:
                    status = "cancelled"
                    reason = rng.choice(CANCEL_REASONS)
                    updated = created + int((anchor - created) * rng.random())
                else:
                    status, updated, version = "booked", created, 1
            appointment_id = rng.uuid7(created)
            yield (
                appointment_id,
                provider.user_id,
                provider_key,
                patient_id,
                user_keys[patient_id],
                provider.clinic_id,
                _at(starts),
                _at(ends),
                status,
                reason,
                video,
                f"load-{appointment_id.hex}" if room else None,
                version,
                _at(created),
                _at(updated),
            )


def _batches(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while batch := [row for _, row in zip(range(size), rows, strict=False)]:
        yield batch


async def _copy_batch(
    raw: Any, model: type[Base], batch: Sequence[tuple[Any, ...]], bar: Counter
) -> None:
    await raw.copy_records_to_table(
        _table(model).name, records=batch, columns=list(copy_columns(model))
    )
    bar.update(len(batch))


async def _copy(raw: Any, model: type[Base], rows: Sequence[tuple[Any, ...]], bar: Counter) -> None:
    for start in range(0, len(rows), BATCH_ROWS):
        await _copy_batch(raw, model, rows[start : start + BATCH_ROWS], bar)


async def _copy_appointments(raw: Any, rows: Iterator[tuple[Any, ...]], bar: Counter) -> None:
    """COPY batch k while a worker thread generates batch k + 1 (the server works meanwhile).

    Only one thread advances the generator at a time, so the rows do not depend on timing.
    """
    batches = _batches(rows, BATCH_ROWS)
    following = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
    while (batch := await following) is not None:
        following = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
        await _copy_batch(raw, Appointment, batch, bar)


_SECONDARY_INDEXES = """
SELECT c.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'appointments'::regclass
  AND NOT EXISTS (
      SELECT 1 FROM pg_constraint k
      WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid
  )
ORDER BY c.relname
"""
_EXCLUSION_CONSTRAINTS = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'appointments'::regclass AND contype = 'x'
ORDER BY conname
"""


async def appointment_index_definitions(raw: Any) -> dict[str, str]:
    """Secondary indexes and exclusion constraints of `appointments`: name -> definition."""
    rows = [*await raw.fetch(_SECONDARY_INDEXES), *await raw.fetch(_EXCLUSION_CONSTRAINTS)]
    return {str(name): str(definition) for name, definition in rows}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _claim(raw: Any) -> None:
    """Settings for a bulk load, the table lock, and the refusal of a non-empty database."""
    await raw.execute("SET LOCAL statement_timeout = 0")
    await raw.execute("SET LOCAL lock_timeout = 0")
    await raw.execute("SET LOCAL maintenance_work_mem = '256MB'")
    await raw.execute("SET LOCAL synchronous_commit = off")
    # Also makes a concurrent second run wait here, then see the first one's rows.
    await raw.execute("LOCK TABLE appointments IN ACCESS EXCLUSIVE MODE")
    if await raw.fetchval("SELECT EXISTS (SELECT 1 FROM appointments)"):
        raise SeedError(
            "the database already has appointments; `seed --scale` loads a benchmark "
            "dataset only into a freshly migrated database (drop it, `carebook migrate`, retry)."
        )
    taken = await raw.fetchval(
        "SELECT count(*) FROM users WHERE lower(email) LIKE $1", f"%@{EMAIL_DOMAIN}"
    )
    if taken:
        raise SeedError(
            f"the database already has {taken} accounts @{EMAIL_DOMAIN} from an earlier "
            "benchmark dataset; start from a freshly migrated database."
        )


async def _load(
    raw: Any, data: _Dataset, plan: ScalePlan, rng: _Random, started: float, progress: Progress
) -> tuple[int, int]:
    """The COPYs and the index rebuild; returns (specialties created, schedule rules)."""
    # Specialties that exist already (say, from the demo) are reused, not duplicated.
    existing = {
        str(name): specialty_id
        for specialty_id, name in await raw.fetch(
            "SELECT id, lower(name) FROM specialties WHERE lower(name) = ANY($1::text[])",
            [name.lower() for _, name in data.specialties],
        )
    }
    new_specialties = [s for s in data.specialties if s[1].lower() not in existing]
    if existing:
        remap = {s[0]: existing[s[1].lower()] for s in data.specialties if s[1].lower() in existing}
        at = copy_columns(Provider).index("specialty_id")
        data.provider_rows = [
            (*r[:at], remap.get(r[at], r[at]), *r[at + 1 :]) for r in data.provider_rows
        ]

    total = (
        len(data.clinics)
        + len(new_specialties)
        + len(data.users)
        + len(data.provider_rows)
        + len(data.rule_rows)
        + plan.appointments
    )
    progress.say(
        f"Loading {plan.clinics} clinics, {len(data.providers)} providers, "
        f"{len(data.patient_ids)} patients and {plan.appointments} appointments "
        f"(random seed and {data.today.isoformat()} fix every row) ..."
    )
    with progress.counting(total, "COPY") as bar:
        await _copy(raw, Clinic, data.clinics, bar)
        await _copy(raw, Specialty, new_specialties, bar)
        await _copy(raw, User, data.users, bar)
        await _copy(raw, Provider, data.provider_rows, bar)
        await _copy(raw, ScheduleRule, data.rule_rows, bar)

        # The identity keys the database gave, for appointments' provider_key / patient_key.
        ids = [p.user_id for p in data.providers] + data.patient_ids
        user_keys: dict[uuid.UUID, int] = {}
        provider_keys: dict[uuid.UUID, int] = {}
        for user_id, user_key, provider_key in await raw.fetch(
            "SELECT u.id, u.key, p.key FROM users u LEFT JOIN providers p ON p.user_id = u.id "
            "WHERE u.id = ANY($1::uuid[])",
            ids,
        ):
            user_keys[user_id] = user_key
            if provider_key is not None:
                provider_keys[user_id] = provider_key

        definitions = await appointment_index_definitions(raw)
        constraints = dict(await raw.fetch(_EXCLUSION_CONSTRAINTS))
        for name in constraints:
            await raw.execute(f"ALTER TABLE appointments DROP CONSTRAINT {_quote(name)}")
        for name in definitions.keys() - constraints.keys():
            await raw.execute(f"DROP INDEX {_quote(name)}")

        await _copy_appointments(raw, _appointments(data, rng, provider_keys, user_keys), bar)

    progress.say(
        f"Rows copied at {clock.monotonic() - started:.1f} s; rebuilding "
        f"{len(definitions) - len(constraints)} indexes and {len(constraints)} "
        "exclusion constraints ..."
    )
    for name, definition in definitions.items():
        if name in constraints:
            # Fails (and rolls everything back) if any two active visits overlapped.
            await raw.execute(
                f"ALTER TABLE appointments ADD CONSTRAINT {_quote(name)} {definition}"
            )
        else:
            await raw.execute(definition)
    progress.say(f"Indexes rebuilt at {clock.monotonic() - started:.1f} s.")
    rebuilt = await appointment_index_definitions(raw)
    if rebuilt != definitions:  # pragma: no cover - a guard, not a branch we expect
        raise RuntimeError(f"rebuilt indexes differ: {rebuilt} != {definitions}")
    return len(new_specialties), len(data.rule_rows)


async def seed_scale(
    settings: Settings,
    appointments: int,
    *,
    random_seed: int = 42,
    today: date | None = None,
    progress: Progress | None = None,
) -> ScaleSummary:
    """Load a benchmark dataset of `appointments` appointments into a migrated, empty database.

    `today` (default: the current UTC date) anchors the history; with the same seed, N and
    `today` the rows are identical, ids included. Raises `SeedError` (and loads nothing) when
    the database already has appointments or accounts of an earlier dataset. `progress`
    (default: lines and a bar on stderr) hears what is being done.
    """
    progress = progress or ConsoleProgress()
    assert settings.database_url is not None
    started = clock.monotonic()
    plan = ScalePlan.of(appointments)
    today = today or datetime.now(UTC).date()
    rng = _Random(random_seed)
    engine = create_async_engine(
        async_url(settings.database_url),
        poolclass=pool.NullPool,
        connect_args={
            "server_settings": {"application_name": "carebook-seed", "timezone": "UTC"},
            "timeout": settings.db_connect_timeout_seconds,
        },
    )
    try:
        async with engine.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection
            assert raw is not None
            async with raw.transaction():
                await _claim(raw)
                progress.say(
                    f"Planning {plan.clinics} clinics x {plan.providers_per_clinic} providers, "
                    "their slot grids and patients ..."
                )
                data = _build(settings, plan, rng, today)
                specialties, rules = await _load(raw, data, plan, rng, started, progress)
            progress.say(
                f"Committed at {clock.monotonic() - started:.1f} s; "
                "VACUUM (ANALYZE) of the loaded tables ..."
            )
            await raw.execute(
                "VACUUM (ANALYZE) clinics, specialties, users, providers, schedule_rules, "
                "appointments"
            )
    finally:
        await engine.dispose()
    from app.analytics.tasks import rebuild_with_settings  # the loaded visits' daily figures

    stats = await rebuild_with_settings(settings)
    progress.say(f"clinic_daily_stats: {stats.rows} rows in {stats.seconds:.1f} s.")
    return ScaleSummary(
        plan=plan,
        clinics=len(data.clinics),
        specialties=specialties,
        providers=len(data.providers),
        schedule_rules=rules,
        patients=len(data.patient_ids),
        staff=data.staff,
        appointments=plan.appointments,
        seconds=clock.monotonic() - started,
        today=today,
        random_seed=random_seed,
    )
