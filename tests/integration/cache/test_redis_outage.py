"""Degrade, don't fail: Redis down or hanging mid-test, then back (DESIGN §5, issue 4).

An app reaches the real test Redis through a TCP proxy (tests/fixtures/redis_proxy.py) that is
switched at runtime to refuse connections (Redis down) or to hang (Redis accepts but never
answers). Meanwhile every endpoint must answer correctly from PostgreSQL, without waiting on
Redis at every request, `/health/ready` must report Redis as degraded, and rate limiting must
still limit (per process). When Redis returns, the cache is used again by itself, and nothing
cached before the outage is served if it changed during it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime
from datetime import time as clock
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.availability import service as availability_service
from app.availability.rules import BookingRules
from app.kit.cache import GENERATION_KEY, Cache
from app.kit.db import Database
from app.models import Role
from app.settings import Settings
from tests.fixtures import servers
from tests.fixtures.app import TEST_PASSWORD, Account, Accounts, client_for, make_settings
from tests.fixtures.app import running_app as running_app_with
from tests.fixtures.booking import Booking, ProviderSetup, local_instant, next_local_day
from tests.fixtures.cache import CacheCounts, read_until_cached
from tests.fixtures.problems import assert_problem
from tests.fixtures.redis_proxy import Mode, RedisProxy, running_redis_proxy

OUTAGES: list[Mode] = ["refuse", "hang"]
TIMED_REQUESTS = 30


@pytest.fixture
async def proxy(test_servers: servers.TestServers) -> AsyncIterator[RedisProxy]:
    async with running_redis_proxy(test_servers.redis_url) as redis_proxy:
        yield redis_proxy


@pytest.fixture
async def direct_redis(test_servers: servers.TestServers) -> AsyncIterator[Redis]:
    """The real test Redis, bypassing the proxy: to look at what the app stored there."""
    client: Redis = Redis.from_url(test_servers.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def proxied_settings(settings: Settings, database: Database, proxy: RedisProxy) -> Settings:
    """The test database (emptied after the test by `database`), Redis through the proxy."""
    return make_settings(settings.database_url, proxy.url)


@pytest.fixture
async def proxied_app(proxied_settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app_with(proxied_settings) as app:
        yield app


def client_at(app: FastAPI, host: str) -> httpx.AsyncClient:
    """A client whose requests the app sees as coming from `host`."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(host, 40_000))
    return httpx.AsyncClient(transport=transport, base_url="http://carebook.test")


async def test_the_proxy_forwards_refuses_and_hangs(proxy: RedisProxy, direct_redis: Redis) -> None:
    """The fixture itself: modes switch at runtime and act on pooled connections too."""
    key = f"cb:test:proxy:{uuid.uuid4().hex}"
    client: Redis = Redis.from_url(proxy.url, socket_timeout=0.25, socket_connect_timeout=0.25)
    try:
        assert await client.set(key, b"through the proxy", ex=60)
        assert await direct_redis.get(key) == b"through the proxy", "same server, same db"
        assert proxy.forwarded == 1
        assert proxy.open_connections == 1  # redis-py keeps it in its pool

        await proxy.set_mode("refuse")
        assert proxy.open_connections == 0, "switching away from forward cuts pooled connections"
        accepted = proxy.accepted
        with pytest.raises(RedisConnectionError):
            await client.get(key)
        assert proxy.accepted > accepted, "a new connection was accepted, then closed at once"
        assert proxy.open_connections == 0

        await proxy.set_mode("hang")
        accepted = proxy.accepted
        with pytest.raises(RedisTimeoutError):
            await client.get(key)
        assert proxy.accepted == accepted + 1, "accepted and held, but never answered"
        assert proxy.forwarded == 1

        await proxy.set_mode("forward")
        assert proxy.open_connections == 0, "connections held while hanging are cut"
        assert await client.get(key) == b"through the proxy"
        assert proxy.forwarded == 2
    finally:
        await client.aclose()
        await direct_redis.delete(key)


async def _availability(
    client: httpx.AsyncClient, provider: ProviderSetup, day: date
) -> dict[str, Any]:
    response = await client.get(
        f"/v1/providers/{provider.id}/availability",
        params={"from": day.isoformat(), "to": day.isoformat()},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _availability_in_database(
    app: FastAPI, provider: ProviderSetup, day: date
) -> dict[str, Any]:
    """What PostgreSQL says, computed without the cache (the same service the endpoint uses)."""
    database: Database = app.state.database
    rules = BookingRules.from_settings(app.state.settings)
    async with database.reading(primary=True) as session:
        result = await availability_service.provider_availability(
            session, rules, provider.id, day, day
        )
    document: dict[str, Any] = result.model_dump(mode="json")
    return document


def _starts(document: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(slot["start"]) for slot in document["slots"]]


async def _ready(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _clinic_names(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/v1/clinics")
    assert response.status_code == 200, response.text
    return [clinic["name"] for clinic in response.json()["items"]]


async def _version(redis: Redis, key: str) -> int:
    value = await redis.get(key)
    return int(value) if value is not None else 0


@pytest.mark.parametrize("outage", OUTAGES)
async def test_redis_outage_degrades_and_recovers(
    outage: Mode,
    proxy: RedisProxy,
    proxied_app: FastAPI,
    proxied_settings: Settings,
    direct_redis: Redis,
) -> None:
    cache: Cache = proxied_app.state.cache
    counted = CacheCounts()
    hits = counted.hits
    async with client_for(proxied_app) as client:
        accounts = Accounts(proxied_app, client)
        booking = Booking(proxied_app, client, accounts)
        admin = await accounts.create(Role.ADMIN)
        provider = await booking.provider(slot_minutes=60, full_name="Dr. Outage")
        day = next_local_day(provider.timezone)
        nine = local_instant(day, clock(9, 0), provider.timezone)

        # Redis healthy: the availability, catalogue and profile caches are warm and used.
        assert (await _ready(client))["redis"] == "ok"
        warm = await read_until_cached(
            CacheCounts(), "availability", lambda: _availability(client, provider, day)
        )
        assert nine in _starts(warm)
        clinics_before = hits.get("clinics", 0)
        assert await _clinic_names(client) == await _clinic_names(client)
        assert hits.get("clinics", 0) == clinics_before + 1
        profile_url = f"/v1/providers/{provider.id}"
        profile = (await client.get(profile_url)).json()
        assert (await client.get(profile_url)).json() == profile
        generation = await _version(direct_redis, GENERATION_KEY)

        # ---- Redis goes away ----
        await proxy.set_mode(outage)
        hits_at_outage = dict(hits)

        ready = await _ready(client)
        assert ready == {
            "status": "ok",
            "database": "ok",
            "redis": "degraded",
            "integrations": {"videosdk": "disabled", "fcm": "disabled"},
        }
        live = await client.get("/health/live")
        assert live.status_code == 200

        # Sign-up, login and the caller's own account.
        email = f"outage-{uuid.uuid4().hex[:8]}@example.com"
        registered = await client.post(
            "/v1/auth/register",
            json={"email": email, "password": TEST_PASSWORD, "full_name": "Pat Outage"},
        )
        assert registered.status_code == 201, registered.text
        token = await client.post(
            "/v1/auth/token", json={"email": email, "password": TEST_PASSWORD}
        )
        assert token.status_code == 200, token.text
        patient_headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        me = await client.get("/v1/me", headers=patient_headers)
        assert me.status_code == 200, me.text
        assert me.json()["id"] == registered.json()["id"]
        assert me.json()["email"] == email

        # Availability from the database, then a booking, then availability that shows it.
        during = await _availability(client, provider, day)
        assert during == await _availability_in_database(proxied_app, provider, day)
        booked = await client.post(
            "/v1/appointments",
            json={"provider_id": str(provider.id), "start": nine.isoformat()},
            headers={**patient_headers, "Idempotency-Key": f"outage-{outage}"},
        )
        assert booked.status_code == 201, booked.text
        appointment = booked.json()
        assert datetime.fromisoformat(appointment["start"]) == nine
        after_booking = await _availability(client, provider, day)
        assert nine not in _starts(after_booking), "the booking made during the outage shows"
        assert after_booking == await _availability_in_database(proxied_app, provider, day)

        mine = await client.get("/v1/appointments", headers=patient_headers)
        assert mine.status_code == 200, mine.text
        assert [a["id"] for a in mine.json()["items"]] == [appointment["id"]]
        assert mine.json()["items"][0]["provider"]["full_name"] == "Dr. Outage"

        # Catalogue and profile, and a catalogue change made while Redis is away.
        specialties = await client.get("/v1/specialties")
        assert specialties.status_code == 200, specialties.text
        assert "General Practice" in [s["name"] for s in specialties.json()["items"]]
        providers = await client.get("/v1/providers", params={"q": "outage"})
        assert providers.status_code == 200, providers.text
        assert [p["id"] for p in providers.json()["items"]] == [str(provider.id)]
        profile_during = await client.get(profile_url)
        assert profile_during.status_code == 200, profile_during.text
        assert profile_during.json() == profile
        created = await client.post(
            "/v1/clinics",
            json={"name": "Opened During Outage", "timezone": "Europe/London"},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
        assert "Opened During Outage" in await _clinic_names(client)

        # The circuit is open: a run of requests does not reach for Redis each time. Counted,
        # not timed: only the circuit's half-open probes (one per cooldown) may try Redis.
        counts = CacheCounts()
        failed_before = counts.failures
        started = time.monotonic()
        for _ in range(TIMED_REQUESTS):
            assert await _availability(client, provider, day) == after_booking
        probes = 1 + int((time.monotonic() - started) // cache.circuit.cooldown)
        tried = counts.failures - failed_before
        assert tried <= probes, (
            f"{TIMED_REQUESTS} requests with Redis {outage} tried it {tried} times "
            f"(at most {probes} probes expected): Redis was waited on instead of being skipped"
        )
        assert hits == hits_at_outage, "nothing was served from Redis while it was away"
        assert counted.openings >= 1, "the circuit's opening is counted for operators"

        # Rate limiting still limits, per process, in an app with a tight per-IP budget.
        await _still_rate_limited(proxied_settings, direct_redis)

        # ---- Redis comes back ----
        await proxy.set_mode("forward")
        # The circuit probes Redis again after its cooldown: poll (each answer must already
        # be correct) until availability is served from the cache again.
        deadline = time.monotonic() + cache.circuit.cooldown + 10
        recovered_from = hits.get("availability", 0)
        while hits.get("availability", 0) == recovered_from:
            assert time.monotonic() < deadline, "the cache was not used again after Redis returned"
            document = await _availability(client, provider, day)
            assert nine not in _starts(document), "a pre-outage value was served"
            await asyncio.sleep(0.1)
        assert await _ready(client) == {
            "status": "ok",
            "database": "ok",
            "redis": "ok",
            "integrations": {"videosdk": "disabled", "fcm": "disabled"},
        }

        # Fresh across the outage: version bumps failed during it, so on recovery the cache
        # generation moved on and nothing cached before the outage is reachable any more ...
        assert await _version(direct_redis, GENERATION_KEY) > generation
        # ... and the availability and the catalogue say what the database says, now from
        # the cache again (the pre-outage clinic list would still be cached, TTL 300 s).
        served = await _availability(client, provider, day)
        assert served == await _availability_in_database(proxied_app, provider, day)
        assert nine not in _starts(served)
        clinics_hits = hits.get("clinics", 0)
        assert "Opened During Outage" in await _clinic_names(client)
        assert "Opened During Outage" in await _clinic_names(client)
        assert hits.get("clinics", 0) > clinics_hits, "the catalogue is cached again"
        assert proxy.mode == "forward"


async def _still_rate_limited(settings: Settings, direct_redis: Redis) -> None:
    """With Redis unreachable, the 6th quick request from one address (burst 5) is refused by
    the per-process fallback, and another address is not affected."""
    rate, burst = 0.2, 5  # 5 s between requests once the burst is spent: no refill meanwhile
    tight = settings.model_copy(
        update={"rate_limit_ip_per_second": rate, "rate_limit_ip_burst": burst}
    )
    address = "10.66.0.1"
    async with running_app_with(tight) as app:
        async with client_at(app, address) as client:
            statuses = [(await client.get("/v1/specialties")).status_code for _ in range(burst)]
            assert statuses == [200] * burst
            refused = await client.get("/v1/specialties")
        assert refused.status_code == 429, (
            f"request {burst + 1} from one address was not limited with Redis unreachable "
            f"(got {refused.status_code}): the per-process fallback must still limit"
        )
        assert_problem(refused, 429, "rate_limited")
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= round(1 / rate)
        assert refused.headers["RateLimit-Limit"] == str(burst)
        assert refused.headers["RateLimit-Remaining"] == "0"
        async with client_at(app, "10.66.0.2") as other:
            assert (await other.get("/v1/specialties")).status_code == 200
    # It was the in-process limiter: nothing reached Redis.
    assert await direct_redis.exists(f"cb:rl:ip:{address}") == 0


async def test_an_account_made_before_the_outage_keeps_working(
    proxy: RedisProxy, proxied_app: FastAPI
) -> None:
    """Tokens issued while Redis was up keep working while it is down (no Redis session)."""
    async with client_for(proxied_app) as client:
        account: Account = await Accounts(proxied_app, client).create(Role.PATIENT)
        await proxy.set_mode("refuse")
        me = await client.get("/v1/me", headers=account.headers)
        assert me.status_code == 200, me.text
        assert me.json()["id"] == str(account.id)
        refreshed = await client.post(
            "/v1/auth/refresh", json={"refresh_token": account.refresh_token}
        )
        assert refreshed.status_code == 200, refreshed.text
        await proxy.set_mode("forward")


async def test_a_change_during_the_outage_is_not_hidden_by_another_instance(
    proxy: RedisProxy, proxied_app: FastAPI, proxied_settings: Settings
) -> None:
    """Two API processes, both behind the proxy. A clinic is created through A while Redis is
    down; after Redis returns, the next catalogue read lands on B. B must not serve the list
    it cached before the outage (its TTL is 300 s): freshness first, in every process."""
    async with (
        running_app_with(proxied_settings) as other_app,
        client_for(proxied_app) as a,
        client_for(other_app) as b,
    ):
        admin = await Accounts(proxied_app, a).create(Role.ADMIN)
        b_hits = CacheCounts().hits
        before = await _clinic_names(b)
        assert await _clinic_names(b) == before
        assert b_hits.get("clinics", 0) == 1, "B has the catalogue cached"

        await proxy.set_mode("refuse")
        created = await a.post(
            "/v1/clinics",
            json={"name": "Opened Through A", "timezone": "Europe/London"},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
        for _ in range(3):
            assert "Opened Through A" in await _clinic_names(b)

        await proxy.set_mode("forward")
        b_cache: Cache = other_app.state.cache
        deadline = time.monotonic() + b_cache.circuit.cooldown + 10
        served_from_cache = b_hits.get("clinics", 0)
        while b_hits.get("clinics", 0) == served_from_cache:
            assert time.monotonic() < deadline, "B did not use the cache again"
            names = await _clinic_names(b)
            assert "Opened Through A" in names, (
                "B served the clinic list it cached before the outage: the version bump A "
                "missed during the outage is known only to A"
            )
            await asyncio.sleep(0.1)
