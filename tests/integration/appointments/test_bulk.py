"""Staff operations (audit F16): bulk status changes and a provider's range cancellation.

A bulk request of up to 500 ids is one set-based UPDATE, one outbox INSERT and one audit
INSERT whatever its size; a sick day cancels a provider's visits in one statement and tells each
patient once, through the outbox and the worker.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from sqlalchemy import text

from app.integrations.fakes import FakeFcm
from app.kit.db import Database
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Account, Accounts, count_statements, make_settings
from tests.fixtures.booking import Booking, ProviderSetup, local_instant, next_local_day
from tests.fixtures.problems import assert_problem
from tests.fixtures.worker import run_worker_until_idle

STATUSES = ("booked", "checked_in", "completed", "cancelled", "no_show")
# Which current statuses each bulk action may move (DESIGN §4 status machine).
MOVABLE = {
    "cancel": {"booked"},
    "check_in": {"booked"},
    "complete": {"booked", "checked_in"},
    "no_show": {"booked", "checked_in"},
}
TARGET = {
    "cancel": "cancelled",
    "check_in": "checked_in",
    "complete": "completed",
    "no_show": "no_show",
}


async def _arrange(
    database: Database,
    provider: ProviderSetup,
    patient: Account,
    statuses: list[str],
    *,
    first_hour: int = 0,
) -> list[uuid.UUID]:
    """Visits an hour apart with the given statuses, straight into the table (one INSERT)."""
    start = local_instant(next_local_day(provider.timezone), time(0, 0), provider.timezone)
    start += timedelta(hours=first_hour)
    async with database.unit_of_work() as session:
        rows = await session.execute(
            text(
                "INSERT INTO appointments (id, provider_id, provider_key, patient_id, "
                "patient_key, clinic_id, starts_at, ends_at, status) "
                "SELECT gen_random_uuid(), p.user_id, p.key, u.id, u.key, p.clinic_id, "
                "CAST(:s AS timestamptz) + (g.n - 1) * interval '1 hour', "
                "CAST(:s AS timestamptz) + (g.n - 1) * interval '1 hour' + interval '30 min', "
                "g.status "
                "FROM providers p, users u, unnest(CAST(:statuses AS text[])) "
                "WITH ORDINALITY AS g(status, n) "
                "WHERE p.user_id = :p AND u.id = :u ORDER BY g.n RETURNING id"
            ),
            {"p": provider.id, "u": patient.id, "s": start, "statuses": statuses},
        )
        return [row.id for row in rows]


async def _clinic(booking: Booking, accounts: Accounts) -> tuple[ProviderSetup, Account, Account]:
    """A provider with a patient and a staff member of the provider's clinic."""
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    staff = await accounts.create(Role.STAFF, clinic_id=provider.clinic_id)
    return provider, patient, staff


async def _statuses(database: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    async with database.reading(primary=True) as session:
        rows = await session.execute(
            text("SELECT id, status FROM appointments WHERE id = ANY(:ids)"), {"ids": ids}
        )
        return {row.id: row.status for row in rows}


async def _events(database: Database) -> list[tuple[str, dict[str, Any]]]:
    async with database.reading(primary=True) as session:
        rows = await session.execute(text("SELECT topic, payload FROM outbox ORDER BY id"))
        return [(row.topic, row.payload) for row in rows]


async def _audit(database: Database) -> list[Any]:
    async with database.reading(primary=True) as session:
        rows = await session.execute(
            text("SELECT actor_id, action, entity, entity_id, details FROM audit_log ORDER BY id")
        )
        return list(rows)


async def _bulk(
    client: httpx.AsyncClient, actor: Account, action: str, ids: list[Any], **extra: Any
) -> httpx.Response:
    return await client.post(
        "/v1/appointments/bulk",
        json={"action": action, "ids": [str(i) for i in ids], **extra},
        headers=actor.headers,
    )


# --- bulk ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", sorted(MOVABLE))
async def test_bulk_of_500_mixed_ids_gives_a_result_per_id(
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
    database: Database,
    action: str,
) -> None:
    provider = await booking.provider()
    other = await booking.provider()  # another clinic: its visits are not the staff's
    patient = await accounts.create(Role.PATIENT)
    staff = await accounts.create(Role.STAFF, clinic_id=provider.clinic_id)
    rng = random.Random(action)
    statuses = [rng.choice(STATUSES) for _ in range(440)]
    own = await _arrange(database, provider, patient, statuses)
    foreign = await _arrange(database, other, patient, ["booked"] * 30, first_hour=1000)
    unknown = [uuid.uuid4() for _ in range(30)]
    ids = own + foreign + unknown
    rng.shuffle(ids)
    assert len(ids) == 500
    before = await _statuses(database, own + foreign)

    response = await _bulk(client, staff, action, ids, reason="Clinic closed")

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == [str(i) for i in ids], "one result per id, in order"
    expected_ok = {i for i in own if before[i] in MOVABLE[action]}
    for result, requested in zip(results, ids, strict=True):
        if requested in expected_ok:
            assert result == {"id": str(requested), "ok": True, "code": None}
        elif requested in own:
            assert result == {"id": str(requested), "ok": False, "code": "invalid_transition"}
        else:  # unknown, or another clinic's: indistinguishable
            assert result == {"id": str(requested), "ok": False, "code": "not_found"}
    after = await _statuses(database, own + foreign)
    for i in own:
        assert after[i] == (TARGET[action] if i in expected_ok else before[i])
    assert all(after[i] == "booked" for i in foreign)

    events = await _events(database)
    assert sorted(p["appointment_id"] for _, p in events) == sorted(map(str, expected_ok))
    assert {topic for topic, _ in events} == {f"appointment.{TARGET[action]}"}
    assert all(p["by"] == str(staff.id) for _, p in events)
    audit = await _audit(database)
    assert sorted(row.entity_id for row in audit) == sorted(map(str, expected_ok))
    assert {(row.actor_id, row.entity) for row in audit} == {(staff.id, "appointment")}


async def test_bulk_costs_the_same_statements_for_2_and_500_ids(
    app: FastAPI,
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
    database: Database,
) -> None:
    provider, patient, staff = await _clinic(booking, accounts)
    small = await _arrange(database, provider, patient, ["booked"] * 2)
    large = await _arrange(database, provider, patient, ["booked"] * 500, first_hour=10)
    counts = []
    for ids in (small, large):
        with count_statements(app.state.database.primary) as log:
            response = await _bulk(client, staff, "check_in", ids)
        assert response.status_code == 200, response.text
        assert all(r["ok"] for r in response.json()["results"])
        counts.append(log.count)
    assert counts[0] == counts[1], counts


async def test_a_provider_bulk_changes_only_their_own_visits(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    colleague = await booking.provider(clinic_id=provider.clinic_id)
    patient = await accounts.create(Role.PATIENT)
    mine = await _arrange(database, provider, patient, ["booked"] * 3)
    theirs = await _arrange(database, colleague, patient, ["booked"], first_hour=10)

    response = await _bulk(client, provider.account, "complete", [*mine, *theirs])

    assert response.status_code == 200, response.text
    assert [r["ok"] for r in response.json()["results"]] == [True, True, True, False]
    assert response.json()["results"][3]["code"] == "not_found"
    assert (await _statuses(database, theirs))[theirs[0]] == "booked"
    assert await _audit(database) == [], "a provider's own visits are not a staff action"


async def test_repeated_ids_get_the_same_result_each_time(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    admin = await accounts.create(Role.ADMIN)
    (visit,) = await _arrange(database, provider, patient, ["booked"])

    response = await _bulk(client, admin, "cancel", [visit, visit], reason="Duplicate")

    assert response.status_code == 200, response.text
    assert [r["ok"] for r in response.json()["results"]] == [True, True]
    assert len(await _events(database)) == 1, "the visit changed once"


async def test_cancel_by_bulk_stores_the_reason_and_frees_the_slot(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider, patient, staff = await _clinic(booking, accounts)
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(10, 0), provider.timezone)
    booked = await booking.book(patient, provider, start)
    assert booked.status_code == 201, booked.text
    assert start.isoformat() not in _starts(await booking.free_slots(provider, day, day))

    response = await _bulk(client, staff, "cancel", [booked.json()["id"]], reason="Sick day")

    assert response.status_code == 200, response.text
    detail = await client.get(f"/v1/appointments/{booked.json()['id']}", headers=patient.headers)
    assert detail.json()["status"] == "cancelled"
    assert detail.json()["cancel_reason"] == "Sick day"
    assert start in _instants(await booking.free_slots(provider, day, day))


async def test_patients_may_not_use_bulk(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    (visit,) = await _arrange(database, provider, patient, ["booked"])

    response = await _bulk(client, patient, "cancel", [visit])

    assert_problem(response, 403, "forbidden")
    assert (await _statuses(database, [visit]))[visit] == "booked"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"action": "cancel", "ids": []}, "ids"),
        ({"action": "cancel", "ids": [str(uuid.uuid4()) for _ in range(501)]}, "ids"),
        ({"action": "cancel", "ids": ["not-a-uuid"]}, "ids"),
        ({"action": "reschedule", "ids": [str(uuid.uuid4())]}, "action"),
        ({"ids": [str(uuid.uuid4())]}, "action"),
        ({"action": "cancel"}, "ids"),
        ({"action": "cancel", "ids": "abc"}, "ids"),
        ({"action": "cancel", "ids": [str(uuid.uuid4())], "reason": "x" * 1001}, "reason"),
    ],
)
async def test_bad_bulk_requests_are_422_and_change_nothing(
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
    database: Database,
    body: dict[str, Any],
    where: str,
) -> None:
    provider, patient, staff = await _clinic(booking, accounts)
    await _arrange(database, provider, patient, ["booked"])

    response = await client.post("/v1/appointments/bulk", json=body, headers=staff.headers)

    problem = assert_problem(response, 422, "validation_error")
    assert any(where in map(str, error["loc"]) for error in problem["errors"]), problem
    assert await _events(database) == []


async def test_bulk_needs_a_bearer_token(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/appointments/bulk", json={"action": "cancel", "ids": [str(uuid.uuid4())]}
    )
    assert_problem(response, 401, "unauthorized")


# --- range cancellation --------------------------------------------------------------------------


def _starts(slots: list[dict[str, str]]) -> set[str]:
    return {slot["start"] for slot in slots}


def _instants(slots: list[dict[str, str]]) -> set[datetime]:
    return {datetime.fromisoformat(slot["start"]) for slot in slots}


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    async with FakeFcm() as fake:
        yield fake


def _worker_settings(base: Settings, fcm: FakeFcm) -> Settings:
    return make_settings(
        base.database_url,
        base.redis_url,
        fcm_base_url=fcm.url,
        fcm_project_id="carebook-test",
        http_retry_base_seconds=0.01,
        http_retry_max_seconds=0.05,
    )


async def _register_phone(client: httpx.AsyncClient, patient: Account) -> str:
    token = f"phone-{patient.id}"
    response = await client.post(
        "/v1/me/devices", json={"token": token, "platform": "ios"}, headers=patient.headers
    )
    assert response.status_code == 201, response.text
    return token


async def test_a_sick_day_frees_the_slots_and_tells_each_patient_once(
    settings: Settings,
    queue: ArqRedis,
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
    database: Database,
    fcm: FakeFcm,
) -> None:
    provider = await booking.provider()
    staff = await accounts.create(Role.STAFF, clinic_id=provider.clinic_id)
    day = next_local_day(provider.timezone)
    patients = [await accounts.create(Role.PATIENT) for _ in range(4)]
    phones = [await _register_phone(client, p) for p in patients]
    starts = [local_instant(day, time(9 + i, 0), provider.timezone) for i in range(4)]
    visits = []
    for patient, start in zip(patients, starts, strict=True):
        response = await booking.book(patient, provider, start)
        assert response.status_code == 201, response.text
        visits.append(response.json()["id"])
    # Visits outside the range, and one already under way, stay as they are.
    next_day = await booking.book(patients[0], provider, starts[0] + timedelta(days=1))
    assert next_day.status_code == 201, next_day.text
    late = local_instant(day, time(16, 0), provider.timezone)
    under_way = await booking.book(patients[1], provider, late)
    assert under_way.status_code == 201, under_way.text
    checked_in = await client.post(
        f"/v1/appointments/{under_way.json()['id']}/check-in", headers=staff.headers
    )
    assert checked_in.status_code == 200, checked_in.text
    await run_worker_until_idle(_worker_settings(settings, fcm), queue, relay=True)
    fcm.deliveries.clear()
    assert not _instants(await booking.free_slots(provider, day, day)) & set(starts)

    response = await client.post(
        f"/v1/providers/{provider.id}/cancellations",
        json={
            "from": local_instant(day, time(0, 0), provider.timezone).isoformat(),
            "to": local_instant(day, time(23, 59), provider.timezone).isoformat(),
            "reason": "The doctor is ill",
        },
        headers=staff.headers,
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"cancelled": 4}
    assert set(starts) <= _instants(await booking.free_slots(provider, day, day))
    statuses = await _statuses(database, [uuid.UUID(v) for v in visits])
    assert set(statuses.values()) == {"cancelled"}
    untouched = await _statuses(
        database, [uuid.UUID(next_day.json()["id"]), uuid.UUID(under_way.json()["id"])]
    )
    assert sorted(untouched.values()) == ["booked", "checked_in"]

    await run_worker_until_idle(_worker_settings(settings, fcm), queue, relay=True)
    # The worker running twice over the same events tells nobody twice.
    await run_worker_until_idle(_worker_settings(settings, fcm), queue, relay=True)
    cancellations = Counter(d.token for d in fcm.deliveries if d.data.get("kind") == "cancelled")
    assert cancellations == Counter(phones)
    for patient, visit in zip(patients, visits, strict=True):
        feed = await client.get("/v1/me/notifications", headers=patient.headers)
        kinds = [
            item["kind"]
            for item in feed.json()["items"]
            if item["kind"] == "cancelled" and visit in str(item)
        ]
        assert kinds == ["cancelled"], feed.json()
    audit = await _audit(database)
    assert sorted(row.entity_id for row in audit if row.action == "appointment.cancelled") == (
        sorted(visits)
    )


async def test_range_cancellation_is_one_statement_however_many_visits(
    app: FastAPI,
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
    database: Database,
) -> None:
    provider, patient, staff = await _clinic(booking, accounts)
    await _arrange(database, provider, patient, ["booked"] * 3)
    await _arrange(database, provider, patient, ["booked"] * 300, first_hour=24 * 30)
    base = local_instant(next_local_day(provider.timezone), time(0, 0), provider.timezone)
    counts = []
    for first, last, expected in ((0, 3, 3), (24 * 30, 24 * 30 + 300, 300)):
        with count_statements(app.state.database.primary) as log:
            response = await client.post(
                f"/v1/providers/{provider.id}/cancellations",
                json={
                    "from": (base + timedelta(hours=first)).isoformat(),
                    "to": (base + timedelta(hours=last)).isoformat(),
                },
                headers=staff.headers,
            )
        assert response.status_code == 200, response.text
        assert response.json() == {"cancelled": expected}
        counts.append(log.count)
    assert counts[0] == counts[1], counts


async def test_range_cancellation_is_for_staff_of_the_clinic_and_admins(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    (visit,) = await _arrange(database, provider, patient, ["booked"])
    elsewhere = await accounts.create(Role.STAFF, clinic_id=await booking.clinic("Other"))
    admin = await accounts.create(Role.ADMIN)
    now = datetime.now(UTC)
    body = {"from": now.isoformat(), "to": (now + timedelta(days=30)).isoformat()}
    url = f"/v1/providers/{provider.id}/cancellations"

    for actor in (patient, provider.account, elsewhere):
        assert_problem(await client.post(url, json=body, headers=actor.headers), 403, "forbidden")
    assert (await _statuses(database, [visit]))[visit] == "booked"

    response = await client.post(url, json=body, headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"cancelled": 1}


async def test_a_provider_who_left_can_still_have_their_visits_cancelled(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider, patient, staff = await _clinic(booking, accounts)
    (visit,) = await _arrange(database, provider, patient, ["booked"])
    async with database.unit_of_work() as session:
        await session.execute(
            text("UPDATE providers SET is_active = false WHERE user_id = :p"), {"p": provider.id}
        )
    now = datetime.now(UTC)
    response = await client.post(
        f"/v1/providers/{provider.id}/cancellations",
        json={"from": now.isoformat(), "to": (now + timedelta(days=30)).isoformat()},
        headers=staff.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"cancelled": 1}
    assert (await _statuses(database, [visit]))[visit] == "cancelled"


async def test_range_cancellation_of_an_unknown_provider_is_404(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    admin = await accounts.create(Role.ADMIN)
    now = datetime.now(UTC)
    response = await client.post(
        f"/v1/providers/{uuid.uuid4()}/cancellations",
        json={"from": now.isoformat(), "to": (now + timedelta(days=1)).isoformat()},
        headers=admin.headers,
    )
    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"from": "2027-01-02T00:00:00Z", "to": "2027-01-01T00:00:00Z"}, 422, "validation_error"),
        ({"from": "2027-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"}, 422, "validation_error"),
        ({"from": "2027-01-01T00:00:00Z", "to": "2028-01-03T00:00:00Z"}, 422, "range_too_large"),
        ({"from": "2027-01-01T00:00:00", "to": "2027-01-02T00:00:00Z"}, 422, "validation_error"),
        ({"from": "tomorrow", "to": "2027-01-02T00:00:00Z"}, 422, "validation_error"),
        # A valid RFC 3339 time with no UTC equivalent (before year 1 there).
        (
            {"from": "0001-01-01T00:00:00+14:00", "to": "0001-01-01T01:00:00+14:00"},
            422,
            "validation_error",
        ),
        ({"to": "2027-01-02T00:00:00Z"}, 422, "validation_error"),
        (
            {"from": "2027-01-01T00:00:00Z", "to": "2027-01-02T00:00:00Z", "reason": 5},
            422,
            "validation_error",
        ),
    ],
)
async def test_bad_ranges_are_refused_and_cancel_nothing(
    client: httpx.AsyncClient,
    booking: Booking,
    accounts: Accounts,
    database: Database,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    provider, patient, staff = await _clinic(booking, accounts)
    (visit,) = await _arrange(database, provider, patient, ["booked"])

    response = await client.post(
        f"/v1/providers/{provider.id}/cancellations", json=body, headers=staff.headers
    )

    assert_problem(response, status, code)
    assert (await _statuses(database, [visit]))[visit] == "booked"


async def test_every_staff_action_on_a_visit_is_audited_and_patients_actions_are_not(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider, patient, staff = await _clinic(booking, accounts)
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(9, 0), provider.timezone)

    own = await booking.book(patient, provider, start)
    assert own.status_code == 201, own.text
    cancelled = await client.post(
        f"/v1/appointments/{own.json()['id']}/cancel", json={}, headers=patient.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert await _audit(database) == []

    booked = await client.post(
        "/v1/appointments",
        json={
            "provider_id": str(provider.id),
            "start": start.isoformat(),
            "patient_id": str(patient.id),
        },
        headers={**staff.headers, "Idempotency-Key": booking.key()},
    )
    assert booked.status_code == 201, booked.text
    visit = booked.json()["id"]
    moved = await client.post(
        f"/v1/appointments/{visit}/reschedule",
        json={"start": (start + timedelta(hours=1)).isoformat()},
        headers={**staff.headers, "Idempotency-Key": booking.key()},
    )
    assert moved.status_code == 200, moved.text
    checked_in = await client.post(f"/v1/appointments/{visit}/check-in", headers=staff.headers)
    assert checked_in.status_code == 200, checked_in.text

    audit = await _audit(database)
    assert [(row.actor_id, row.action, row.entity, row.entity_id) for row in audit] == [
        (staff.id, "appointment.booked", "appointment", visit),
        (staff.id, "appointment.rescheduled", "appointment", visit),
        (staff.id, "appointment.checked_in", "appointment", visit),
    ]
    assert audit[1].details["to"] == (start + timedelta(hours=1)).astimezone(UTC).isoformat()
