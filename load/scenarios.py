"""Load scenarios and baselines: which server they need and which requests they send.

Request lists are built before a run from what the database holds (provider ids, timezones,
specialties, free slots, accounts, read directly with asyncpg), shuffled with a fixed seed, and
sent round-robin, so consecutive requests hit different cache keys and the working set is
realistic. Scenarios that book or cancel send each prepared request once and stop when the
prepared set is used up (their request budget is its size); they run on a scratch copy of the
database. Accounts are logged in through the API before the measured window.
"""

from __future__ import annotations

import importlib
import math
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from load import prepare
from load.baselines import constant_app, naive_app, raw_asyncpg
from load.client import Call, RequestFactory, build_request, cycle_requests
from load.prepare import Account, Booking, Slot, asyncpg_dsn

Target = Literal["carebook", "constant", "naive", "in-process"]
Kind = Literal["scenario", "baseline"]

MAX_PROVIDERS = 48  # "a few dozen" providers ...
WINDOW_OFFSETS = (1, 8, 15, 22)  # ... times a few 7-day windows, starting tomorrow
WINDOW_DAYS = 7
SEARCH_OFFSETS = (1, 2, 3, 4)
SHUFFLE_SEED = 8
PAGE = 50  # the listing scenarios' page size
BOOKERS = 64  # patients who book distinct slots (one token each)
MAX_BOOKINGS = 8_000  # prepared bookings per run at most (the run stops when they are used)
LISTERS = 16  # patients and providers whose appointment lists are read
RECORDS_PER_PATIENT = 20
ANALYTICS_DAYS = 365
# The mixed scenario's pattern of 20 requests: 80 % reads, 15 % bookings, 5 % cancellations.
MIXED_PATTERN: tuple[str, ...] = (
    ("availability",) * 8 + ("listing",) * 4 + ("profile",) * 4 + ("booking",) * 3 + ("cancel",)
)
MIXED_BUDGET = 60_000  # requests prepared for one mixed run at most


@dataclass(frozen=True)
class ProviderRow:
    id: uuid.UUID
    timezone: str
    specialty: str


@dataclass(frozen=True)
class Dataset:
    """What the scenarios need from the prepared database, and its size for the report."""

    providers: tuple[ProviderRow, ...]  # active providers with a schedule (at most MAX_PROVIDERS)
    specialties: tuple[str, ...]  # specialties that have such providers
    appointment_count: int
    provider_count: int
    today: date
    database_url: str = ""  # the prepared database

    def require_providers(self) -> None:
        if not self.providers:
            raise RuntimeError(
                "the database has no active provider with a schedule: seed it first "
                "(`carebook seed --scale N` or `carebook seed --demo`)"
            )

    @property
    def label(self) -> str:
        """`100 k` or `10 M`: the appointment count, for scale tables."""
        count = self.appointment_count
        if count >= 1_000_000:
            return f"{count / 1_000_000:.3g} M"
        if count >= 1_000:
            return f"{count / 1_000:.3g} k"
        return str(count)


_PROVIDERS = """
SELECT p.user_id, p.timezone, s.name AS specialty
FROM providers p
JOIN specialties s ON s.id = p.specialty_id
WHERE p.is_active AND EXISTS (SELECT 1 FROM schedule_rules r WHERE r.provider_id = p.user_id)
ORDER BY p.key
LIMIT $1
"""


async def load_dataset(database_url: str, *, max_providers: int = MAX_PROVIDERS) -> Dataset:
    """Read providers, specialties and table sizes straight from PostgreSQL."""
    connection = await prepare.connect(database_url)
    try:
        rows = await connection.fetch(_PROVIDERS, max_providers)
        appointments = await connection.fetchval("SELECT count(*) FROM appointments")
        providers = await connection.fetchval("SELECT count(*) FROM providers")
    finally:
        await connection.close()
    chosen = tuple(ProviderRow(r["user_id"], r["timezone"], r["specialty"]) for r in rows)
    return Dataset(
        providers=chosen,
        specialties=tuple(sorted({p.specialty for p in chosen})),
        appointment_count=int(appointments),
        provider_count=int(providers),
        today=datetime.now(UTC).date(),
        database_url=database_url,
    )


def _shuffled(requests: list[bytes]) -> list[bytes]:
    random.Random(SHUFFLE_SEED).shuffle(requests)  # noqa: S311 - an order, not a secret
    return requests


def send_once(requests: Sequence[bytes]) -> RequestFactory:
    """Each request exactly once, in order: the run's budget must be `len(requests)`."""
    return requests.__getitem__


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- what a scenario gets and gives ------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What a scenario's setup may use: the dataset, the server (port 0 for in-process
    baselines), the database that server uses (a scratch copy for writing scenarios) and the
    run's bounds."""

    dataset: Dataset
    port: int
    database_url: str
    concurrency: int
    max_requests: int
    contenders: int = 100
    contention_slots: int = 5


@dataclass(frozen=True)
class Contention:
    """One slot fought over: 201s seen by the clients, and active rows in the table after."""

    winners: tuple[int, ...]  # per slot
    rows: tuple[int, ...]  # per slot, counted in SQL after the run

    @property
    def double_bookings(self) -> int:
        return sum(max(n - 1, 0) for n in self.rows)


@dataclass
class Workload:
    """What to send: a factory (HTTP) or a call (in-process), with its bounds."""

    factory: RequestFactory | None = None
    call: Call | None = None
    budget: int | None = None  # at most this many requests (the size of a prepared set)
    expected_statuses: frozenset[int] = frozenset()
    bursts: list[RequestFactory] = field(default_factory=list)  # contention: one per slot
    prime: list[bytes] = field(default_factory=list)  # sent once, untimed, before the run
    notes: list[str] = field(default_factory=list)
    logged_in: list[uuid.UUID] = field(default_factory=list)  # refresh tokens to forget
    # Runs after the load with the 201s of each burst (counts the rows per contended slot).
    after: Callable[[tuple[int, ...]], Awaitable[Contention]] | None = None
    close: Callable[[], Awaitable[None]] | None = None


SetupFunction = Callable[[Setup], Awaitable[Workload]]


def _cycled(build: Callable[[Dataset, int], list[bytes]]) -> SetupFunction:
    async def setup(context: Setup) -> Workload:
        return Workload(factory=cycle_requests(build(context.dataset, context.port)))

    return setup


# --- read scenarios ----------------------------------------------------------------------------


def constant_requests(dataset: Dataset, port: int) -> list[bytes]:
    """The baseline's one endpoint."""
    return [build_request("GET", constant_app.PATH, port=port)]


def availability_windows(dataset: Dataset) -> list[tuple[ProviderRow, date, date]]:
    dataset.require_providers()
    windows = []
    for provider in dataset.providers:
        for offset in WINDOW_OFFSETS:
            first = dataset.today + timedelta(days=offset)
            windows.append((provider, first, first + timedelta(days=WINDOW_DAYS - 1)))
    random.Random(SHUFFLE_SEED).shuffle(windows)  # noqa: S311 - an order, not a secret
    return windows


def availability_requests(dataset: Dataset, port: int, prefix: str = "") -> list[bytes]:
    """One provider's free slots over a 7-day window: providers x windows, shuffled."""
    return [
        build_request(
            "GET",
            f"{prefix}/v1/providers/{provider.id}/availability",
            port=port,
            params={"from": first.isoformat(), "to": last.isoformat()},
        )
        for provider, first, last in availability_windows(dataset)
    ]


def search_requests(dataset: Dataset, port: int) -> list[bytes]:
    """Multi-provider search over 7 days by specialty: specialties x start dates, shuffled."""
    dataset.require_providers()
    requests = []
    for specialty in dataset.specialties:
        for offset in SEARCH_OFFSETS:
            day = dataset.today + timedelta(days=offset)
            requests.append(
                build_request(
                    "GET",
                    "/v1/availability",
                    port=port,
                    params={"date": day.isoformat(), "days": "7", "specialty": specialty},
                )
            )
    return _shuffled(requests)


@dataclass(frozen=True)
class Listers:
    """Accounts whose appointment lists are read: patients, providers and clinic staff."""

    patients: list[Account]
    providers: list[Account]
    staff: list[Account]

    @property
    def everyone(self) -> list[Account]:
        return [*self.patients, *self.providers, *self.staff]

    @classmethod
    async def load(cls, database_url: str) -> Listers:
        connection = await prepare.connect(database_url)
        try:
            return cls(
                patients=await prepare.load_accounts(connection, "patient", LISTERS),
                providers=await prepare.load_accounts(connection, "provider", LISTERS),
                staff=await prepare.load_accounts(connection, "staff", LISTERS),
            )
        finally:
            await connection.close()


def _upcoming(dataset: Dataset) -> str:
    return datetime.combine(dataset.today, time(0), tzinfo=UTC).isoformat()


def listing_requests(
    dataset: Dataset, port: int, accounts: Sequence[Account], tokens: dict[uuid.UUID, str]
) -> list[bytes]:
    """`GET /v1/appointments?limit=50` for each account, the first page of the whole history
    and of the upcoming visits."""
    requests = []
    for account in accounts:
        for params in ({"limit": str(PAGE)}, {"limit": str(PAGE), "from": _upcoming(dataset)}):
            requests.append(
                build_request(
                    "GET",
                    "/v1/appointments",
                    port=port,
                    params=params,
                    headers=_bearer(tokens[account.id]),
                )
            )
    return _shuffled(requests)


async def listing_setup(context: Setup) -> Workload:
    listers = await Listers.load(context.database_url)
    tokens = await prepare.log_in(context.port, listers.everyone)
    requests = listing_requests(context.dataset, context.port, listers.everyone, tokens)
    return Workload(
        factory=cycle_requests(requests),
        logged_in=list(tokens),
        notes=[f"{len(tokens)} accounts (patients, providers, staff), {len(requests)} pages"],
    )


def naive_listing_requests(dataset: Dataset, port: int, listers: Listers) -> list[bytes]:
    """The same pages from the N+1 baseline (who is asking is a query parameter there)."""
    requests = []
    scopes: list[tuple[str, uuid.UUID | None]] = [("patient_id", a.id) for a in listers.patients]
    scopes += [("provider_id", a.id) for a in listers.providers]
    scopes += [("clinic_id", a.clinic_id) for a in listers.staff]
    for name, value in scopes:
        for extra in ({}, {"from": _upcoming(dataset)}):
            requests.append(
                build_request(
                    "GET",
                    naive_app.LISTING_PATH,
                    port=port,
                    params={name: str(value), "limit": str(PAGE), **extra},
                )
            )
    return _shuffled(requests)


async def naive_listing_setup(context: Setup) -> Workload:
    listers = await Listers.load(context.database_url)
    return Workload(
        factory=cycle_requests(naive_listing_requests(context.dataset, context.port, listers))
    )


async def records_setup(context: Setup) -> Workload:
    connection = await prepare.connect(context.database_url)
    try:
        patients = await prepare.load_accounts(connection, "patient", LISTERS)
        (admin,) = await prepare.load_accounts(connection, "admin", 1)
        added = await prepare.ensure_records(
            connection, [p.id for p in patients], RECORDS_PER_PATIENT, admin.id
        )
    finally:
        await connection.close()
    tokens = await prepare.log_in(context.port, [*patients, admin])
    requests = []
    for patient in patients:
        for reader in (patient, admin):
            requests.append(
                build_request(
                    "GET",
                    f"/v1/patients/{patient.id}/records",
                    port=context.port,
                    headers=_bearer(tokens[reader.id]),
                )
            )
    notes = [f"{len(patients)} patients' lists, read by the patient and by an admin"]
    if added:
        notes.append(f"{added} record rows added to the scratch copy ({RECORDS_PER_PATIENT} each)")
    return Workload(factory=cycle_requests(_shuffled(requests)), notes=notes)


async def analytics_setup(context: Setup) -> Workload:
    connection = await prepare.connect(context.database_url)
    try:
        staff = await prepare.load_accounts(connection, "staff", LISTERS)
        admins = await prepare.load_accounts(connection, "admin", 1)
    finally:
        await connection.close()
    tokens = await prepare.log_in(context.port, [*staff, *admins])
    first, last = prepare.dates_back(context.dataset.today, ANALYTICS_DAYS)
    requests = [
        build_request(
            "GET",
            "/v1/analytics/clinics",
            port=context.port,
            params={"from": first.isoformat(), "to": last.isoformat()},
            headers=_bearer(token),
        )
        for token in tokens.values()
    ]
    return Workload(
        factory=cycle_requests(_shuffled(requests)),
        logged_in=list(tokens),
        notes=[f"{first} to {last}, as {len(staff)} clinics' staff and an admin"],
    )


# --- writing scenarios -------------------------------------------------------------------------


def booking_request(port: int, booking: Booking, token: str) -> bytes:
    return build_request(
        "POST",
        "/v1/appointments",
        port=port,
        json_body={"provider_id": str(booking.slot.provider_id), "start": _iso(booking.slot)},
        headers={**_bearer(token), "Idempotency-Key": uuid.uuid4().hex},
    )


def _iso(slot: Slot) -> str:
    return slot.starts_at.astimezone(UTC).isoformat()


async def prepared_bookings(context: Setup, count: int, seed: int = 1) -> list[Booking]:
    """`count` bookings of distinct free slots by `BOOKERS` patients, none colliding."""
    connection = await prepare.connect(context.database_url)
    try:
        patients = await prepare.load_accounts(connection, "patient", BOOKERS)
        slots = await prepare.free_slots(connection, [p.id for p in context.dataset.providers])
        intervals = await prepare.active_intervals(connection, [p.id for p in patients])
    finally:
        await connection.close()
    return prepare.assign(slots, patients, intervals, count, seed)


def _booking_count(context: Setup) -> int:
    return min(context.max_requests, MAX_BOOKINGS)


async def booking_setup(context: Setup) -> Workload:
    bookings = await prepared_bookings(context, _booking_count(context))
    tokens = await prepare.log_in(context.port, list({b.patient for b in bookings}))
    requests = [booking_request(context.port, b, tokens[b.patient.id]) for b in bookings]
    return Workload(
        factory=send_once(requests),
        budget=len(requests),
        notes=[f"{len(requests)} distinct free slots prepared, {len(tokens)} patients"],
    )


async def _contenders(context: Setup) -> tuple[list[Account], list[Slot]]:
    connection = await prepare.connect(context.database_url)
    try:
        patients = await prepare.load_accounts(connection, "patient", context.contenders)
        slots = await prepare.free_slots(
            connection, [p.id for p in context.dataset.providers[: context.contention_slots]]
        )
        intervals = await prepare.active_intervals(connection, [p.id for p in patients])
    finally:
        await connection.close()
    picked = prepare.contended_slots(slots, patients, intervals, context.contention_slots, seed=2)
    if not picked:
        raise RuntimeError("no free slot that every contender could book")
    return patients, picked


async def count_rows(database_url: str, table: str, slots: Sequence[Slot]) -> tuple[int, ...]:
    """Active rows starting at each slot, counted in SQL (the truth, whatever clients saw)."""
    connection = await prepare.connect(database_url)
    try:
        counts = []
        for slot in slots:
            counts.append(
                await connection.fetchval(
                    f"SELECT count(*) FROM {table} WHERE provider_id = $1 AND starts_at = $2 "
                    "AND status IN ('booked', 'checked_in')",
                    slot.provider_id,
                    slot.starts_at,
                )
            )
    finally:
        await connection.close()
    return tuple(int(n) for n in counts)


def _contention_workload(
    context: Setup, slots: Sequence[Slot], bursts: list[list[bytes]], table: str
) -> Workload:
    async def after(winners: tuple[int, ...]) -> Contention:
        rows = await count_rows(context.database_url, table, slots)
        return Contention(winners=winners, rows=rows)

    return Workload(
        bursts=[send_once(burst) for burst in bursts],
        expected_statuses=frozenset({409}),
        after=after,
        notes=[f"{len(slots)} slots x {len(bursts[0])} clients at once"],
    )


async def contention_setup(context: Setup) -> Workload:
    patients, slots = await _contenders(context)
    tokens = await prepare.log_in(context.port, patients)
    bursts = [
        [booking_request(context.port, Booking(slot, p), tokens[p.id]) for p in patients]
        for slot in slots
    ]
    return _contention_workload(context, slots, bursts, "appointments")


async def naive_contention_setup(context: Setup) -> Workload:
    patients, slots = await _contenders(context)
    bursts = [
        [
            build_request(
                "POST",
                naive_app.BOOKING_PATH,
                port=context.port,
                json_body={
                    "provider_id": str(slot.provider_id),
                    "patient_id": str(p.id),
                    "start": _iso(slot),
                },
            )
            for p in patients
        ]
        for slot in slots
    ]
    return _contention_workload(context, slots, bursts, naive_app.TABLE)


async def mixed_setup(context: Setup) -> Workload:
    """80 % reads (availability, own appointment lists, provider profiles), 15 % bookings of
    distinct free slots, 5 % cancellations of booked visits by their clinic's staff."""
    budget = min(context.max_requests, MIXED_BUDGET)
    per_pattern = len(MIXED_PATTERN)
    bookings = await prepared_bookings(
        context, math.ceil(budget / per_pattern) * MIXED_PATTERN.count("booking"), seed=3
    )
    connection = await prepare.connect(context.database_url)
    try:
        staff = await prepare.load_accounts(connection, "staff", 100)
        cancellable = await prepare.booked_appointments(
            connection,
            [p.id for p in context.dataset.providers],
            math.ceil(budget / per_pattern) * MIXED_PATTERN.count("cancel"),
        )
    finally:
        await connection.close()
    patients = list({b.patient for b in bookings})
    tokens = await prepare.log_in(context.port, [*patients, *staff])
    staff_token = {s.clinic_id: tokens[s.id] for s in staff}
    port = context.port
    reads = {
        "availability": availability_requests(context.dataset, port),
        "listing": listing_requests(context.dataset, port, patients, tokens),
        "profile": [
            build_request("GET", f"/v1/providers/{p.id}", port=port)
            for p in context.dataset.providers
        ],
    }
    writes = {
        "booking": [booking_request(port, b, tokens[b.patient.id]) for b in bookings],
        "cancel": [
            build_request(
                "POST",
                f"/v1/appointments/{appointment_id}/cancel",
                port=port,
                json_body={"reason": "Load test: provider unavailable"},
                headers=_bearer(staff_token[clinic_id]),
            )
            for appointment_id, clinic_id in cancellable
            if clinic_id in staff_token
        ],
    }
    # Bounded by what was prepared: no booking or cancellation is ever sent twice.
    patterns = min(len(writes[kind]) // MIXED_PATTERN.count(kind) for kind in ("booking", "cancel"))
    budget = min(budget, patterns * per_pattern)
    if budget < per_pattern:
        raise RuntimeError("not enough free slots or booked visits for the mixed scenario")
    order = list(MIXED_PATTERN)
    random.Random(SHUFFLE_SEED).shuffle(order)  # noqa: S311 - an order, not a secret
    sequence: list[bytes] = []
    used = dict.fromkeys([*reads, *writes], 0)
    for _ in range(budget // per_pattern):
        for kind in order:
            pool = reads.get(kind) or writes[kind]
            sequence.append(pool[used[kind] % len(pool)])
            used[kind] += 1
    return Workload(
        factory=send_once(sequence),
        budget=len(sequence),
        prime=reads["availability"],
        logged_in=list(tokens),
        notes=[
            f"prepared {len(sequence):,} requests: {used['booking']:,} bookings, "
            f"{used['cancel']:,} cancellations"
        ],
    )


# --- in-process baselines ------------------------------------------------------------------


def _rules_now() -> datetime:
    """The API's `BookingRules.now()`: the current minute, rounded up."""
    current = datetime.now(UTC)
    floor = current.replace(second=0, microsecond=0)
    return floor if floor == current else floor + timedelta(minutes=1)


async def raw_availability_setup(context: Setup) -> Workload:
    """The API's availability statement, the same provider x window parameters, through an
    asyncpg pool as large as the API's, with the same concurrency (no HTTP)."""
    now = _rules_now()
    params = [
        {
            "provider_id": provider.id,
            "from_date": first,
            "to_date": last,
            "earliest": now + raw_asyncpg.MIN_NOTICE,
            "latest": now + raw_asyncpg.HORIZON,
            "ignore_appointment_id": None,
        }
        for provider, first, last in availability_windows(context.dataset)
    ]
    runner = await raw_asyncpg.AvailabilityQuery.open(asyncpg_dsn(context.database_url))
    return Workload(call=runner.caller(params), close=runner.close)


async def raw_booking_setup(context: Setup) -> Workload:
    """The booking transaction (provider lock, checks, insert, outbox) through asyncpg."""
    bookings = await prepared_bookings(context, _booking_count(context))
    runner = await raw_asyncpg.BookingTransaction.open(asyncpg_dsn(context.database_url))
    return Workload(
        call=runner.caller(bookings),
        budget=len(bookings),
        expected_statuses=frozenset(),
        close=runner.close,
        notes=[f"{len(bookings)} distinct free slots prepared"],
    )


# --- the catalogue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    target: Target
    cache_enabled: bool
    setup: SetupFunction
    kind: Kind = "scenario"
    cache_name: str | None = None  # the `cache` label whose hit rate the report shows
    # Send every distinct request once before the timed run, and keep the timed run within one
    # clock minute when it fits: availability cache keys embed the current minute.
    prime: bool = False
    scratch: bool = False  # writes rows: runs on a scratch copy of the prepared database
    route: tuple[str, str] | None = None  # (module, path) the build must have, else skipped
    mixed_workers: bool = False  # uses `--mixed-workers` uvicorn workers

    @property
    def app(self) -> str:
        return {
            "carebook": "app.main:app_factory",
            "constant": "load.baselines.constant_app:app_factory",
            "naive": "load.baselines.naive_app:app_factory",
            "in-process": "",
        }[self.target]


async def _availability_setup(context: Setup) -> Workload:
    return Workload(factory=cycle_requests(availability_requests(context.dataset, context.port)))


async def _primed_availability_setup(context: Setup) -> Workload:
    requests = availability_requests(context.dataset, context.port)
    return Workload(factory=cycle_requests(requests), prime=requests)


async def naive_availability_setup(context: Setup) -> Workload:
    requests = availability_requests(context.dataset, context.port, prefix=naive_app.PREFIX)
    return Workload(factory=cycle_requests(requests))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "constant",
            "baseline: FastAPI returning a constant availability-sized JSON",
            "constant",
            cache_enabled=False,
            setup=_cycled(constant_requests),
            kind="baseline",
        ),
        Scenario(
            "availability-warm",
            "GET /v1/providers/{id}/availability, 7-day windows, Redis cache on",
            "carebook",
            cache_enabled=True,
            setup=_primed_availability_setup,
            cache_name="availability",
            prime=True,
        ),
        Scenario(
            "availability-cold",
            "the same requests with CAREBOOK_CACHE_ENABLED=false (every one computed in SQL)",
            "carebook",
            cache_enabled=False,
            setup=_availability_setup,
            cache_name="availability",
        ),
        Scenario(
            "search",
            "GET /v1/availability?date=&days=7&specialty= (one set-based query, not cached)",
            "carebook",
            cache_enabled=True,
            setup=_cycled(search_requests),
        ),
        Scenario(
            "booking",
            "POST /v1/appointments of distinct prepared free slots, one Idempotency-Key each",
            "carebook",
            cache_enabled=True,
            setup=booking_setup,
            scratch=True,
        ),
        Scenario(
            "contention",
            "hot slot: every client books the same slot at once, slot after slot",
            "carebook",
            cache_enabled=True,
            setup=contention_setup,
            scratch=True,
        ),
        Scenario(
            "listing",
            "GET /v1/appointments?limit=50 as patients, providers and clinic staff",
            "carebook",
            cache_enabled=True,
            setup=listing_setup,
        ),
        Scenario(
            "records",
            "GET /v1/patients/{id}/records as the patient and as an admin",
            "carebook",
            cache_enabled=True,
            setup=records_setup,
            scratch=True,
            route=("app.records.endpoints", "/v1/patients/{}/records"),
        ),
        Scenario(
            "analytics",
            f"GET /v1/analytics/clinics over {ANALYTICS_DAYS} days, as staff and admin",
            "carebook",
            cache_enabled=True,
            setup=analytics_setup,
            route=("app.analytics.endpoints", "/v1/analytics/clinics"),
        ),
        Scenario(
            "mixed",
            "80 % reads (availability, listings, profiles), 15 % bookings, 5 % cancellations",
            "carebook",
            cache_enabled=True,
            setup=mixed_setup,
            cache_name="availability",  # bookings and cancellations bump provider versions
            scratch=True,
            mixed_workers=True,
        ),
        Scenario(
            "raw-availability",
            "baseline: the availability statement through asyncpg, in-process, no HTTP",
            "in-process",
            cache_enabled=False,
            setup=raw_availability_setup,
            kind="baseline",
        ),
        Scenario(
            "raw-booking",
            "baseline: the booking transaction through asyncpg, in-process, no HTTP",
            "in-process",
            cache_enabled=False,
            setup=raw_booking_setup,
            kind="baseline",
            scratch=True,
        ),
        Scenario(
            "naive-listing",
            "anti-pattern: the page of 50, then the provider and the patient row by row (N+1)",
            "naive",
            cache_enabled=False,
            setup=naive_listing_setup,
            kind="baseline",
        ),
        Scenario(
            "naive-availability",
            "anti-pattern: rules, time off and appointments fetched, slots looped in Python",
            "naive",
            cache_enabled=False,
            setup=naive_availability_setup,
            kind="baseline",
        ),
        Scenario(
            "naive-contention",
            "anti-pattern: check-then-insert without lock or constraint, the contention load",
            "naive",
            cache_enabled=False,
            setup=naive_contention_setup,
            kind="baseline",
            scratch=True,
        ),
    )
}
SCALE_SCENARIOS = ("availability-cold", "listing")  # run on the second (larger) dataset too

_PATH_PARAMETER = re.compile(r"\{[^}]*\}")


def route_present(route: tuple[str, str]) -> bool:
    """Whether the API has the route (endpoints built on other branches may be absent)."""
    module, path = route
    router: Any = importlib.import_module(module).router
    return any(_PATH_PARAMETER.sub("{}", getattr(r, "path", "")) == path for r in router.routes)
