"""/metrics: every family of the operations guide, recorded where the behaviour happens."""

from __future__ import annotations

import socket
import uuid
from datetime import time

import httpx
import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from sqlalchemy import text

from app.health.metrics import OutboxCollector
from app.kit.db import Database, WriteSession
from app.kit.metrics import exposition
from app.kit.resilience import CircuitOpen, ResiliencePolicy, ResilientClient, TransientFailure
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Accounts, client_for, make_settings, running_app
from tests.fixtures.booking import Booking, local_instant, next_local_day
from tests.fixtures.observability import Metrics
from tests.fixtures.problems import assert_problem
from tests.fixtures.worker import run_worker_until_idle

HTTP_FAMILIES = [
    ("carebook_http_requests_total", "counter"),
    ("carebook_http_request_duration_seconds", "histogram"),
    ("carebook_http_requests_in_flight", "gauge"),
]
FAMILIES = [
    *HTTP_FAMILIES,
    ("carebook_db_pool_size", "gauge"),
    ("carebook_db_pool_connections_in_use", "gauge"),
    ("carebook_db_pool_overflow_connections", "gauge"),
    ("carebook_db_pool_waits_total", "counter"),
    ("carebook_db_pool_wait_seconds", "histogram"),
    ("carebook_db_slow_statements_total", "counter"),
    ("carebook_cache_requests_total", "counter"),
    ("carebook_rate_limit_rejections_total", "counter"),
    ("carebook_booking_conflicts_total", "counter"),
    ("carebook_idempotent_replays_total", "counter"),
    ("carebook_outbox_backlog", "gauge"),
    ("carebook_outbox_oldest_age_seconds", "gauge"),
    ("carebook_outbox_dead_letters", "gauge"),
    ("carebook_job_runs_total", "counter"),
    ("carebook_job_failures_total", "counter"),
    ("carebook_job_retries_total", "counter"),
    ("carebook_job_duration_seconds", "histogram"),
    ("carebook_circuit_breaker_state", "gauge"),
    ("carebook_external_requests_total", "counter"),
]


async def scrape(client: httpx.AsyncClient) -> Metrics:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["cache-control"] == "no-store"
    return Metrics(response.text)


def delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return (after.value(name, **labels) or 0.0) - (before.value(name, **labels) or 0.0)


async def test_every_family_after_a_booking_a_cache_hit_a_429_and_a_job(
    settings: Settings, database: Database, queue: ArqRedis
) -> None:
    tight = make_settings(
        settings.database_url, settings.redis_url, rate_limit_register_per_minute=1
    )
    async with running_app(tight) as app, client_for(app) as client:
        app.state.outbox_metrics = OutboxCollector(ttl=0)  # every scrape reads afresh
        before = await scrape(client)
        accounts = Accounts(app, client)
        booking = Booking(app, client, accounts)
        provider = await booking.provider()
        patient, rival = await accounts.create(Role.PATIENT), await accounts.create(Role.PATIENT)
        start = local_instant(next_local_day(provider.timezone), time(10, 0), provider.timezone)

        key = booking.key()
        assert (await booking.book(patient, provider, start, key=key)).status_code == 201
        replay = await booking.book(patient, provider, start, key=key)
        assert replay.headers["idempotent-replayed"] == "true"
        assert_problem(await booking.book(rival, provider, start), 409, "slot_unavailable")

        await client.get(f"/v1/providers/{provider.id}")
        assert (await client.get(f"/v1/providers/{provider.id}")).status_code == 200  # cached

        register = {"email": "reg@example.com", "password": "long enough pw", "full_name": "R"}
        assert (await client.post("/v1/auth/register", json=register)).status_code == 201
        again = {**register, "email": "reg2@example.com"}
        assert_problem(await client.post("/v1/auth/register", json=again), 429, "rate_limited")
        assert (await client.get(f"/v1/nowhere/{uuid.uuid4()}")).status_code == 404

        pending = await scrape(client)
        await run_worker_until_idle(tight, queue, relay=True)
        after = await scrape(client)

    for name, kind in FAMILIES:
        assert after.has_family(name, kind), name

    booking_route = {"method": "POST", "route": "/v1/appointments"}
    assert delta(before, after, "carebook_http_requests_total", **booking_route, status="201") == 2
    assert delta(before, after, "carebook_http_requests_total", **booking_route, status="409") == 1
    assert (
        delta(
            before,
            after,
            "carebook_http_request_duration_seconds_count",
            **booking_route,
            status="201",
        )
        == 2
    )
    assert delta(before, after, "carebook_http_requests_total", route="unmatched") >= 1
    # Route templates only: no label value carries an id.
    assert str(provider.id) not in after.text
    assert (after.value("carebook_http_requests_in_flight") or 0) >= 1  # the scrape itself

    assert delta(before, after, "carebook_idempotent_replays_total") == 1
    assert delta(before, after, "carebook_booking_conflicts_total") == 1
    assert delta(before, after, "carebook_cache_requests_total", result="hit") >= 1
    assert delta(before, after, "carebook_cache_requests_total", result="miss") >= 1
    assert delta(before, after, "carebook_rate_limit_rejections_total", policy="register") == 1

    assert (after.value("carebook_db_pool_size", engine="primary") or 0) >= tight.db_pool_size
    assert after.value("carebook_db_pool_connections_in_use", engine="primary") is not None
    assert after.value("carebook_db_pool_overflow_connections", engine="primary") is not None

    # The booking's event waited in the outbox until the worker ran.
    assert (pending.value("carebook_outbox_backlog") or 0) >= 1
    assert (pending.value("carebook_outbox_oldest_age_seconds") or 0) > 0
    assert after.value("carebook_outbox_backlog") == 0
    assert after.value("carebook_outbox_oldest_age_seconds") == 0
    assert after.value("carebook_outbox_dead_letters") == 0

    assert delta(before, after, "carebook_job_runs_total", job="handle_event") >= 1
    assert delta(before, after, "carebook_job_duration_seconds_count", job="handle_event") >= 1
    assert delta(before, after, "carebook_job_failures_total", job="handle_event") == 0
    assert delta(before, after, "carebook_job_runs_total", job="sweep_outbox") >= 1


def _probe_routes(app: FastAPI) -> None:
    @app.get("/_probe/db")
    async def touch_db(session: WriteSession) -> dict[str, int]:
        return {"one": int(await session.scalar(text("SELECT 1")) or 0)}


async def test_pool_waits_are_counted_and_a_timed_out_wait_is_a_503(
    settings: Settings, database: Database
) -> None:
    small = make_settings(
        settings.database_url,
        settings.redis_url,
        db_pool_size=1,
        db_max_overflow=0,
        db_pool_timeout_seconds=0.2,
    )
    async with running_app(small) as app, client_for(app) as client:
        _probe_routes(app)
        assert (await client.get("/_probe/db")).status_code == 200
        before = Metrics(exposition().decode())
        own: Database = app.state.database
        async with own.primary.connect() as held:  # the only connection of the pool
            await held.execute(text("SELECT 1"))
            holding = Metrics(exposition().decode())
            response = await client.get("/_probe/db")
        after = Metrics(exposition().decode())

    assert_problem(response, 503, "service_unavailable")
    assert delta(before, holding, "carebook_db_pool_connections_in_use", engine="primary") == 1
    assert delta(before, after, "carebook_db_pool_waits_total", engine="primary") == 1
    assert delta(before, after, "carebook_db_pool_wait_seconds_count", engine="primary") == 1
    assert delta(before, after, "carebook_db_pool_wait_seconds_sum", engine="primary") >= 0.2
    assert delta(before, after, "carebook_db_pool_connections_in_use", engine="primary") == 0


async def test_scraping_works_while_the_database_is_down(settings: Settings) -> None:
    dead = make_settings("postgresql+asyncpg://postgres@127.0.0.1:1/x", settings.redis_url)
    async with running_app(dead) as app, client_for(app) as client:
        metrics = await scrape(client)
    for name, kind in HTTP_FAMILIES:
        assert metrics.has_family(name, kind), name
    # Unknown is left out, never reported as zero.
    assert metrics.value("carebook_outbox_backlog") is None


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_breaker_state_gauge_follows_the_breaker() -> None:
    policy = ResiliencePolicy(retry_attempts=1, breaker_fail_max=2, breaker_reset_seconds=60)
    service = f"probe-{uuid.uuid4().hex[:6]}"
    async with ResilientClient(service, f"http://127.0.0.1:{_closed_port()}", policy) as http:
        closed = Metrics(exposition().decode())
        for _ in range(2):
            with pytest.raises(TransientFailure):
                await http.request("GET", "/")
        opened = Metrics(exposition().decode())
        with pytest.raises(CircuitOpen):
            await http.request("GET", "/")
        failed_fast = Metrics(exposition().decode())

    assert closed.value("carebook_circuit_breaker_state", service=service) == 0
    assert opened.value("carebook_circuit_breaker_state", service=service) == 2
    assert delta(closed, opened, "carebook_external_requests_total", service=service) == 2
    assert (
        delta(
            opened,
            failed_fast,
            "carebook_external_requests_total",
            service=service,
            outcome="breaker_open",
        )
        == 1
    )
