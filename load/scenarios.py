"""Load scenarios: which server they need and which requests they send.

Request lists are built before a run from what the database holds (provider ids, timezones and
specialties, read directly with asyncpg), shuffled with a fixed seed, and sent round-robin, so
consecutive requests hit different cache keys and the working set is realistic.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # no stubs, no py.typed

from load.baselines import constant_app
from load.client import RequestFactory, build_request, cycle_requests

Target = Literal["carebook", "constant"]

MAX_PROVIDERS = 48  # "a few dozen" providers ...
WINDOW_OFFSETS = (1, 8, 15, 22)  # ... times a few 7-day windows, starting tomorrow
WINDOW_DAYS = 7
SEARCH_OFFSETS = (1, 2, 3, 4)
SHUFFLE_SEED = 8


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

    def require_providers(self) -> None:
        if not self.providers:
            raise RuntimeError(
                "the database has no active provider with a schedule: seed it first "
                "(`carebook seed --scale N` or `carebook seed --demo`)"
            )


def asyncpg_dsn(database_url: str) -> str:
    """A libpq-style DSN for asyncpg from any SQLAlchemy PostgreSQL URL."""
    parts = urlsplit(database_url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"not a PostgreSQL URL: scheme {parts.scheme!r}")
    return urlunsplit(("postgresql", *parts[1:]))


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
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
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
    )


def _shuffled(requests: list[bytes]) -> list[bytes]:
    random.Random(SHUFFLE_SEED).shuffle(requests)  # noqa: S311 - an order, not a secret
    return requests


def constant_requests(dataset: Dataset, port: int) -> list[bytes]:
    """The baseline's one endpoint."""
    return [build_request("GET", constant_app.PATH, port=port)]


def availability_requests(dataset: Dataset, port: int) -> list[bytes]:
    """One provider's free slots over a 7-day window: providers x windows, shuffled."""
    dataset.require_providers()
    requests = []
    for provider in dataset.providers:
        for offset in WINDOW_OFFSETS:
            first = dataset.today + timedelta(days=offset)
            last = first + timedelta(days=WINDOW_DAYS - 1)
            requests.append(
                build_request(
                    "GET",
                    f"/v1/providers/{provider.id}/availability",
                    port=port,
                    params={"from": first.isoformat(), "to": last.isoformat()},
                )
            )
    return _shuffled(requests)


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
class Scenario:
    name: str
    description: str
    target: Target
    cache_enabled: bool
    build: Callable[[Dataset, int], list[bytes]]
    cache_name: str | None = None  # the `cache` label whose hit rate the report shows
    # Send every distinct request once before the timed run, and keep the timed run within one
    # clock minute when it fits: availability cache keys embed the current minute.
    prime: bool = False

    def factory(self, dataset: Dataset, port: int) -> RequestFactory:
        """Round-robin over the scenario's requests."""
        return cycle_requests(self.build(dataset, port))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "constant",
            "baseline: FastAPI returning a constant availability-sized JSON",
            "constant",
            cache_enabled=False,
            build=constant_requests,
        ),
        Scenario(
            "availability-warm",
            "GET /v1/providers/{id}/availability, 7-day windows, Redis cache on",
            "carebook",
            cache_enabled=True,
            build=availability_requests,
            cache_name="availability",
            prime=True,
        ),
        Scenario(
            "availability-cold",
            "the same requests with CAREBOOK_CACHE_ENABLED=false (every one computed in SQL)",
            "carebook",
            cache_enabled=False,
            build=availability_requests,
            cache_name="availability",
        ),
        Scenario(
            "search",
            "GET /v1/availability?date=&days=7&specialty= (one set-based query, not cached)",
            "carebook",
            cache_enabled=True,
            build=search_requests,
        ),
    )
}
