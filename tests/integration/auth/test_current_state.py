"""Authorization follows the user's current state, not the token's (issue 12 §4).

A token names its user; whether the account still exists and is active, its role and a staff
member's clinic come from the database through the per-process principal cache: at once when
the change is committed in this process (its `user.` events), within the cache's TTL when
another process committed it, and a token for a missing user is a 401, never a 500.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import delete, event, func, make_url, select, text, update

from app.auth import service as auth_service
from app.auth.dependencies import CurrentPrincipal
from app.auth.principals import PrincipalCache
from app.kit.db import Database
from app.kit.errors import NotFound, ValidationFailed
from app.models import Clinic, Device, Role, User
from app.settings import Settings
from tests.fixtures.app import Accounts, client_for, count_statements, make_settings
from tests.fixtures.app import running_app as running_app_with
from tests.fixtures.booking import Booking
from tests.fixtures.problems import assert_problem
from tests.fixtures.redis_proxy import RedisProxy, RedisTarget, running_redis_proxy
from tests.fixtures.worker import wait_for

# The principal-cache read, as it appears in the statement log.
STATE_READ = "SELECT users.role, users.is_active, users.clinic_id"


def device() -> dict[str, str]:
    return {"token": f"{uuid.uuid4().hex}:APA91b{uuid.uuid4().hex}", "platform": "android"}


def clinic_body() -> dict[str, str]:
    return {"name": f"Clinic {uuid.uuid4().hex[:6]}", "timezone": "Europe/Berlin"}


async def change(database: Database, user_id: uuid.UUID, **values: Any) -> None:
    """A committed change through the auth service (which emits `user.changed`)."""
    async with database.unit_of_work() as session:
        await auth_service.change_user(session, user_id, **values)


async def count_rows(database: Database, model: type[Clinic] | type[Device]) -> int:
    async with database.reading(primary=True) as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def principal_reads() -> float:
    return REGISTRY.get_sample_value("carebook_principal_reads_total") or 0.0


def assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthorized")


@pytest.fixture
async def other_process(settings: Settings, database: Database) -> AsyncIterator[FastAPI]:
    """A second API process on the same database and Redis with a short principal TTL: it
    sees this process's changes only through the database, as another replica would."""
    other = make_settings(settings.database_url, settings.redis_url, principal_cache_seconds=0.5)
    async with running_app_with(other) as app:
        yield app


async def eventually_status(
    request: Callable[[], Awaitable[httpx.Response]], status: int, *, what: str
) -> httpx.Response:
    last: list[httpx.Response] = []

    async def reached() -> bool:
        last[:] = [await request()]
        return last[0].status_code == status

    await wait_for(reached, what=what)
    return last[0]


# --- the cases of the issue -------------------------------------------------------------------


async def test_demoted_then_deactivated_admin_loses_the_admin_endpoints_at_once(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    admin = await accounts.create(Role.ADMIN)
    assert (await client.get("/v1/audit", headers=admin.headers)).status_code == 200
    created = await client.post("/v1/clinics", json=clinic_body(), headers=admin.headers)
    assert created.status_code == 201, created.text
    clinics = await count_rows(database, Clinic)

    await change(database, admin.id, role=Role.PATIENT)
    assert_problem(await client.get("/v1/audit", headers=admin.headers), 403, "forbidden")
    refused = await client.post("/v1/clinics", json=clinic_body(), headers=admin.headers)
    assert_problem(refused, 403, "forbidden")

    await change(database, admin.id, is_active=False)
    assert_unauthorized(await client.get("/v1/audit", headers=admin.headers))
    assert_unauthorized(await client.post("/v1/clinics", json=clinic_body(), headers=admin.headers))
    assert await count_rows(database, Clinic) == clinics


async def test_admin_changed_straight_in_the_database_loses_access_within_the_ttl(
    other_process: FastAPI, accounts: Accounts, database: Database
) -> None:
    """The issue's exact case: demoted and deactivated by an UPDATE no event announced."""
    admin = await accounts.create(Role.ADMIN)
    async with client_for(other_process) as http:
        assert (await http.get("/v1/audit", headers=admin.headers)).status_code == 200
        async with database.unit_of_work() as session:
            await session.execute(
                update(User).where(User.id == admin.id).values(role="patient", is_active=False)
            )
        denied = await eventually_status(
            lambda: http.get("/v1/audit", headers=admin.headers), 401, what="the audit log 401"
        )
        assert_unauthorized(denied)
        clinics = await count_rows(database, Clinic)
        refused = await http.post("/v1/clinics", json=clinic_body(), headers=admin.headers)
        assert_unauthorized(refused)
    assert await count_rows(database, Clinic) == clinics


async def test_deactivated_patient_can_neither_list_appointments_nor_register_devices(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    assert (await client.get("/v1/appointments", headers=patient.headers)).status_code == 200
    first = await client.post("/v1/me/devices", json=device(), headers=patient.headers)
    assert first.status_code == 201, first.text

    await change(database, patient.id, is_active=False)
    assert_unauthorized(await client.get("/v1/appointments", headers=patient.headers))
    assert_unauthorized(await client.post("/v1/me/devices", json=device(), headers=patient.headers))
    assert await count_rows(database, Device) == 1

    # Reactivated, the same token works again at once: absence was cached, and forgotten.
    await change(database, patient.id, is_active=True)
    assert (await client.get("/v1/appointments", headers=patient.headers)).status_code == 200


async def test_token_of_a_deleted_user_is_401_not_500(
    client: httpx.AsyncClient, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    assert (await client.get("/v1/appointments", headers=patient.headers)).status_code == 200
    async with database.unit_of_work() as session:
        await auth_service.delete_user(session, patient.id)

    assert_unauthorized(await client.post("/v1/me/devices", json=device(), headers=patient.headers))
    assert_unauthorized(await client.get("/v1/appointments", headers=patient.headers))
    assert_unauthorized(await client.get("/v1/me", headers=patient.headers))
    assert await count_rows(database, Device) == 0


async def test_row_deleted_behind_the_apps_back_is_401_in_every_process(
    client: httpx.AsyncClient, other_process: FastAPI, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    async with database.unit_of_work() as session:
        await session.execute(delete(User).where(User.id == patient.id))
    # Never seen by this process: read from the database, found missing.
    assert_unauthorized(await client.post("/v1/me/devices", json=device(), headers=patient.headers))
    async with client_for(other_process) as http:
        response = await http.post("/v1/me/devices", json=device(), headers=patient.headers)
    assert_unauthorized(response)


async def test_role_change_takes_effect_here_at_once_and_elsewhere_within_the_ttl(
    client: httpx.AsyncClient, other_process: FastAPI, accounts: Accounts, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    async with client_for(other_process) as http:
        for api in (client, http):  # both processes know the user as a patient
            assert_problem(await api.get("/v1/audit", headers=patient.headers), 403, "forbidden")

        await change(database, patient.id, role=Role.ADMIN)
        # The role that counts is the database's: the token still says "patient".
        assert (await client.get("/v1/audit", headers=patient.headers)).status_code == 200
        await eventually_status(
            lambda: http.get("/v1/audit", headers=patient.headers), 200, what="the promotion"
        )

        await change(database, patient.id, role=Role.PATIENT)
        assert_problem(await client.get("/v1/audit", headers=patient.headers), 403, "forbidden")
        await eventually_status(
            lambda: http.get("/v1/audit", headers=patient.headers), 403, what="the demotion"
        )


async def test_staff_moved_to_another_clinic_manages_only_the_new_one(
    client: httpx.AsyncClient, accounts: Accounts, booking: Booking, database: Database
) -> None:
    provider = await booking.provider()
    elsewhere = await booking.clinic("Elsewhere")
    staff = await accounts.create(Role.STAFF, clinic_id=provider.clinic_id)
    schedule = f"/v1/providers/{provider.id}/schedule"
    assert (await client.get(schedule, headers=staff.headers)).status_code == 200

    await change(database, staff.id, clinic_id=elsewhere)
    assert_problem(await client.get(schedule, headers=staff.headers), 403, "forbidden")
    await change(database, staff.id, clinic_id=provider.clinic_id)
    assert (await client.get(schedule, headers=staff.headers)).status_code == 200


async def test_change_user_keeps_the_staff_rules(
    accounts: Accounts, booking: Booking, database: Database
) -> None:
    patient = await accounts.create(Role.PATIENT)
    async with database.unit_of_work() as session:
        with pytest.raises(ValidationFailed):
            await auth_service.change_user(session, patient.id, role=Role.STAFF)
        with pytest.raises(NotFound):
            await auth_service.change_user(session, uuid.uuid4(), is_active=False)
    clinic = await booking.clinic()
    await change(database, patient.id, role=Role.STAFF, clinic_id=clinic)
    async with database.reading(primary=True) as session:
        topics = (await session.scalars(text("SELECT topic FROM outbox ORDER BY id"))).all()
    assert topics.count("user.changed") == 1


# --- cost and resilience ----------------------------------------------------------------------


async def test_a_warm_principal_costs_no_statement(
    app: FastAPI, client: httpx.AsyncClient, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)
    principals: PrincipalCache = app.state.principals
    principals.invalidate([patient.id])
    database: Database = app.state.database

    in_transaction: list[bool] = []

    def note_transaction(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(STATE_READ):
            in_transaction.append(conn.connection.driver_connection.is_in_transaction())

    event.listen(database.primary.sync_engine, "after_cursor_execute", note_transaction)
    try:
        before = principal_reads()
        with count_statements(database.primary, include_auth=True) as cold:
            assert (await client.get("/v1/me", headers=patient.headers)).status_code == 200
        after_cold = principal_reads()
    finally:
        event.remove(database.primary.sync_engine, "after_cursor_execute", note_transaction)
    with count_statements(database.primary, include_auth=True) as warm:
        assert (await client.get("/v1/me", headers=patient.headers)).status_code == 200
    assert (after_cold - before, principal_reads() - after_cold) == (1, 0)
    # GET /v1/me itself reads the user once; the auth step adds one read only when cold.
    assert [s for s in cold.statements if s.startswith(STATE_READ)] == cold.statements[:1]
    assert cold.count == 2, cold.statements
    assert warm.count == 1, warm.statements
    assert not any(s.startswith(STATE_READ) for s in warm.statements)
    assert in_transaction == [False]  # autocommit: no BEGIN or ROLLBACK round trips


async def test_concurrent_misses_for_one_user_share_one_read(
    app: FastAPI, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)
    principals: PrincipalCache = app.state.principals
    principals.invalidate([patient.id])
    database: Database = app.state.database
    with count_statements(database.primary, include_auth=True) as log:
        found = await asyncio.gather(*(principals.get(patient.id) for _ in range(20)))
    assert {p.user_id if p else None for p in found} == {patient.id}
    assert log.count == 1, log.statements


async def test_a_read_that_raced_an_invalidation_is_not_cached(
    app: FastAPI, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)
    principals: PrincipalCache = app.state.principals
    principals.invalidate([patient.id])
    database: Database = app.state.database
    reads: list[str] = []

    def invalidate_mid_read(*args: Any) -> None:
        if str(args[2]).startswith(STATE_READ):
            reads.append(str(args[2]))
            if len(reads) == 1:  # the user changes while the first read is on the wire
                principals.invalidate([patient.id])

    event.listen(database.primary.sync_engine, "before_cursor_execute", invalidate_mid_read)
    try:
        assert await principals.get(patient.id) is not None
        assert await principals.get(patient.id) is not None
        assert await principals.get(patient.id) is not None
    finally:
        event.remove(database.primary.sync_engine, "before_cursor_execute", invalidate_mid_read)
    assert len(reads) == 2  # the raced read was not kept; the next one was


async def test_without_a_cache_every_request_reads_the_user(
    settings: Settings, database: Database, accounts: Accounts
) -> None:
    uncached = make_settings(settings.database_url, settings.redis_url, principal_cache_seconds=0)
    patient = await accounts.create(Role.PATIENT)
    async with running_app_with(uncached) as app, client_for(app) as http:
        with count_statements(app.state.database.primary, include_auth=True) as log:
            for _ in range(3):
                assert (
                    await http.get("/v1/appointments", headers=patient.headers)
                ).status_code == 200
    assert sum(s.startswith(STATE_READ) for s in log.statements) == 3


async def test_redis_down_does_not_break_authentication(
    settings: Settings, database: Database, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)
    async with running_redis_proxy(settings.redis_url or "") as proxy:
        await proxy.set_mode("refuse")
        degraded = make_settings(settings.database_url, proxy.url)
        async with running_app_with(degraded) as app, client_for(app) as http:
            for _ in range(3):
                response = await http.get("/v1/me", headers=patient.headers)
                assert response.status_code == 200, response.text
            async with app.state.database.unit_of_work() as session:
                await auth_service.change_user(session, patient.id, is_active=False)
            assert_unauthorized(await http.get("/v1/me/notifications", headers=patient.headers))


def _whoami_route(app: FastAPI) -> None:
    """A route that needs only the authentication step (no database of its own)."""

    @app.get("/_probe/whoami")
    async def whoami(principal: CurrentPrincipal) -> dict[str, str]:
        return {"user_id": str(principal.user_id), "role": principal.role.value}


@pytest.fixture
async def database_proxy(settings: Settings) -> AsyncIterator[tuple[RedisProxy, str]]:
    """The test database behind a TCP proxy that can refuse (the database is down). The proxy
    is protocol-blind, so the Redis test proxy serves PostgreSQL as well."""
    url = make_url(settings.database_url or "")
    target = RedisTarget(
        host=url.host or "127.0.0.1", port=url.port or 5432, socket_path=None, db=0
    )
    proxy = RedisProxy(target)
    await proxy.start()
    try:
        yield (
            proxy,
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        )
    finally:
        await proxy.stop()


async def test_database_down_a_cached_principal_still_authenticates(
    settings: Settings,
    database: Database,
    accounts: Accounts,
    database_proxy: tuple[RedisProxy, str],
) -> None:
    proxy, proxied_url = database_proxy
    known, unknown = await accounts.create(Role.PATIENT), await accounts.create(Role.PATIENT)
    # A TTL far beyond the test, so the entry cannot expire on a slow machine.
    proxied = make_settings(proxied_url, settings.redis_url, principal_cache_seconds=60)
    async with running_app_with(proxied) as app, client_for(app) as http:
        _whoami_route(app)
        warm = await http.get("/_probe/whoami", headers=known.headers)
        assert warm.json() == {"user_id": str(known.id), "role": "patient"}

        await proxy.set_mode("refuse")
        assert (await http.get("/_probe/whoami", headers=known.headers)).status_code == 200
        # Nothing cached: the outage is the database's, a 503 as everywhere else, not a 401.
        outage = await http.get("/_probe/whoami", headers=unknown.headers)
        assert_problem(outage, 503, "service_unavailable")
        await proxy.set_mode("forward")
        await eventually_status(
            lambda: http.get("/_probe/whoami", headers=unknown.headers), 200, what="recovery"
        )


async def test_statement_counters_leave_the_auth_read_out_by_default(
    app: FastAPI, client: httpx.AsyncClient, accounts: Accounts
) -> None:
    """Exact counts elsewhere must not depend on whether a principal entry just expired."""
    patient = await accounts.create(Role.PATIENT)
    principals: PrincipalCache = app.state.principals
    database: Database = app.state.database
    principals.invalidate([patient.id])
    with (
        count_statements(database.primary) as measured,
        count_statements(database.primary, include_auth=True) as everything,
    ):
        assert (await client.get("/v1/me", headers=patient.headers)).status_code == 200
    assert (measured.count, everything.count) == (1, 2)
