"""Who sees and who may change which appointment (DESIGN §4): lists scoped by role with filters
and keyset pages, 404 (never 403) for appointments the caller may not see, 403 for role-level
refusals, and 401 without a token."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.models import Appointment, Role
from tests.fixtures.app import Account, Accounts
from tests.fixtures.booking import (
    APPOINTMENT_KEYS,
    Booking,
    ProviderSetup,
    local_instant,
    next_local_day,
)
from tests.fixtures.problems import assert_problem
from tests.fixtures.world import Worlds


def new_key() -> str:
    return f"authz-{uuid.uuid4().hex}"


@dataclass
class World:
    """Two clinics, a provider and a staff member in each (plus an idle second provider at
    north), an admin and two patients.

    a1: alice @ north 09:00 day    a2: bob @ north 10:00 day    a3: alice @ south 11:00 day
    a4: bob @ south 09:00 day+1    a5: alice @ north 10:00 day+1, cancelled
    """

    north: ProviderSetup
    north_colleague: ProviderSetup
    south: ProviderSetup
    north_staff: Account
    south_staff: Account
    admin: Account
    alice: Account
    bob: Account
    day: date
    appointments: dict[str, dict[str, Any]]

    def ids(self, *names: str) -> list[str]:
        """The ids of the named appointments, in start order."""
        chosen = sorted(names, key=lambda n: (self.starts(n), self.appointments[n]["id"]))
        return [self.appointments[n]["id"] for n in chosen]

    def starts(self, name: str) -> datetime:
        return datetime.fromisoformat(self.appointments[name]["start"])


async def build_world(worlds: Worlds) -> World:
    # The cast's other clinic is the south one, in New York.
    people = await worlds.cast(
        provider_name="Dr. North",
        specialty="Cardiology",
        other_timezone="America/New_York",
        patient_names=("Alice Patient", "Bob Patient"),
    )
    north, alice, bob = people.provider, people.patient, people.other_patient
    south = await worlds.booking.provider(
        clinic_id=people.other_clinic_id,
        timezone="America/New_York",
        full_name="Dr. South",
        specialty="Dermatology",
        slot_minutes=60,
    )
    day = next_local_day("America/New_York", days_ahead=3)
    plan = {
        "a1": (alice, north, day, time(9)),
        "a2": (bob, north, day, time(10)),
        "a3": (alice, south, day, time(11)),
        "a4": (bob, south, day + timedelta(days=1), time(9)),
        "a5": (alice, north, day + timedelta(days=1), time(10)),
    }
    appointments = {
        name: (await worlds.visit(patient, provider, at, day=on)).body
        for name, (patient, provider, on, at) in plan.items()
    }
    # Cancelled straight in the database, so these visibility tests do not depend on the
    # cancel endpoint (covered in test_lifecycle.py).
    async with worlds.booking.database.unit_of_work() as session:
        await session.execute(
            update(Appointment)
            .where(Appointment.id == uuid.UUID(appointments["a5"]["id"]))
            .values(status="cancelled", cancel_reason="Travelling")
        )
    cancelled = await worlds.booking.client.get(
        f"/v1/appointments/{appointments['a5']['id']}", headers=alice.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    appointments["a5"] = cancelled.json()
    return World(
        north=north,
        north_colleague=people.other_provider,
        south=south,
        north_staff=people.staff,
        south_staff=people.other_staff,
        admin=people.admin,
        alice=alice,
        bob=bob,
        day=day,
        appointments=appointments,
    )


async def list_ids(
    client: httpx.AsyncClient, viewer: Account, params: dict[str, Any] | None = None
) -> list[str]:
    response = await client.get("/v1/appointments", params=params or {}, headers=viewer.headers)
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    return [item["id"] for item in response.json()["items"]]


async def walk(
    client: httpx.AsyncClient, viewer: Account, params: dict[str, Any]
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(50):
        query = {**params, "limit": 1}
        if cursor is not None:
            query["cursor"] = cursor
        response = await client.get("/v1/appointments", params=query, headers=viewer.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 1
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert page["items"]
    else:
        pytest.fail("pagination did not finish")
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)), ids
    return items


# --- lists ------------------------------------------------------------------------------------


async def test_each_role_lists_what_it_may_see(client: httpx.AsyncClient, worlds: Worlds) -> None:
    world = await build_world(worlds)
    expected = {
        "alice": (world.alice, world.ids("a1", "a3", "a5")),
        "bob": (world.bob, world.ids("a2", "a4")),
        "north provider": (world.north.account, world.ids("a1", "a2", "a5")),
        "south provider": (world.south.account, world.ids("a3", "a4")),
        "north colleague": (world.north_colleague.account, []),
        "north staff": (world.north_staff, world.ids("a1", "a2", "a5")),
        "south staff": (world.south_staff, world.ids("a3", "a4")),
        "admin": (world.admin, world.ids("a1", "a2", "a3", "a4", "a5")),
    }

    seen = {name: await list_ids(client, viewer) for name, (viewer, _) in expected.items()}

    assert seen == {name: ids for name, (_, ids) in expected.items()}


async def test_list_items_embed_provider_and_patient(
    client: httpx.AsyncClient, worlds: Worlds
) -> None:
    world = await build_world(worlds)

    response = await client.get("/v1/appointments", headers=world.admin.headers)

    assert response.status_code == 200, response.text
    items = {item["id"]: item for item in response.json()["items"]}
    people = {str(world.alice.id): "Alice Patient", str(world.bob.id): "Bob Patient"}
    providers = {
        str(world.north.id): ("Dr. North", "Cardiology", world.north.clinic_id),
        str(world.south.id): ("Dr. South", "Dermatology", world.south.clinic_id),
    }
    assert len(items) == 5
    for name, booked in world.appointments.items():
        item = items[booked["id"]]
        assert set(item) == APPOINTMENT_KEYS, name
        full_name, specialty, clinic_id = providers[item["provider_id"]]
        assert item["provider"] == {
            "id": item["provider_id"],
            "full_name": full_name,
            "specialty": specialty,
        }
        assert item["patient"] == {
            "id": item["patient_id"],
            "full_name": people[item["patient_id"]],
        }
        assert item["clinic_id"] == str(clinic_id)
        assert item["start"] == booked["start"]
        assert item["end"] == booked["end"]
        assert item["status"] == ("cancelled" if name == "a5" else "booked")
    assert items[world.appointments["a5"]["id"]]["cancel_reason"] == "Travelling"
    # Times are rendered with the provider's offset.
    south_start = datetime.fromisoformat(items[world.appointments["a3"]["id"]]["start"])
    assert south_start == local_instant(world.day, time(11), "America/New_York")
    assert south_start.utcoffset() in {timedelta(hours=-5), timedelta(hours=-4)}
    detail = await client.get(
        f"/v1/appointments/{world.appointments['a3']['id']}", headers=world.alice.headers
    )
    assert detail.status_code == 200, detail.text
    assert detail.json() == items[world.appointments["a3"]["id"]]


async def test_list_filters(client: httpx.AsyncClient, worlds: Worlds) -> None:
    world = await build_world(worlds)
    admin = world.admin
    everyone = world.ids("a1", "a2", "a3", "a4", "a5")

    assert await list_ids(client, admin, {"status": "booked"}) == world.ids("a1", "a2", "a3", "a4")
    assert await list_ids(client, admin, {"status": "cancelled"}) == world.ids("a5")
    assert await list_ids(client, admin, {"status": ["booked", "cancelled"]}) == everyone
    assert await list_ids(client, admin, {"status": ["completed", "no_show"]}) == []
    assert await list_ids(client, world.alice, {"status": "booked"}) == world.ids("a1", "a3")

    a2, a3 = world.starts("a2"), world.starts("a3")
    # [from, to): from is inclusive, to exclusive.
    window = {"from": a2.isoformat(), "to": a3.isoformat()}
    assert await list_ids(client, admin, window) == world.ids("a2")
    assert await list_ids(client, admin, {"from": a3.isoformat()}) == world.ids("a3", "a4", "a5")
    assert await list_ids(client, admin, {"to": a2.isoformat()}) == world.ids("a1")
    assert await list_ids(
        client, admin, {"from": (a2 + timedelta(seconds=1)).isoformat()}
    ) == world.ids("a3", "a4", "a5")
    # The same instant with another offset selects the same appointments.
    as_utc = {"from": a2.astimezone(UTC).isoformat(), "to": a3.astimezone(UTC).isoformat()}
    assert await list_ids(client, admin, as_utc) == world.ids("a2")
    assert await list_ids(
        client, world.north.account, {"from": a2.isoformat(), "status": "booked"}
    ) == world.ids("a2")

    assert await list_ids(client, admin, {"order": "desc"}) == everyone[::-1]
    assert await list_ids(client, admin, {"order": "asc"}) == everyone
    assert (
        await list_ids(client, admin, {"order": "desc", "status": "booked", "to": a3.isoformat()})
        == world.ids("a1", "a2")[::-1]
    )

    for params in (
        {"status": "bogus"},
        {"order": "sideways"},
        {"from": "yesterday"},
        {"to": "2030-13-01T00:00:00+00:00"},
        {"limit": 0},
        {"limit": 101},
    ):
        response = await client.get("/v1/appointments", params=params, headers=admin.headers)
        assert response.status_code == 422, (params, response.text)
        assert_problem(response, 422, "validation_error")


async def test_list_time_filters_must_be_instants(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)

    # DESIGN §4: times are RFC 3339 with an offset; a naive time or a bare date names no
    # instant, as for a booking's `start` (naive -> validation_error).
    for params in (
        {"from": "2030-01-01T00:00:00"},
        {"to": "2030-01-01T09:30:00"},
        {"from": "2030-01-01"},
    ):
        response = await client.get("/v1/appointments", params=params, headers=patient.headers)
        assert response.status_code == 422, (params, response.text)
        assert_problem(response, 422, "validation_error")


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_keyset_pages_walk_every_appointment_once(
    client: httpx.AsyncClient, booking: Booking, worlds: Worlds, order: str
) -> None:
    world = await build_world(worlds)
    # Two patients at the same instant with two providers: equal starts, ordered by id.
    tie = local_instant(world.day + timedelta(days=2), time(14), "Europe/London")
    tied: dict[str, str] = {}
    for name, patient, provider in (
        ("alice", world.alice, world.north),
        ("bob", world.bob, world.south),
    ):
        response = await booking.book(patient, provider, tie)
        assert response.status_code == 201, response.text
        tied[name] = response.json()["id"]

    pages = await walk(client, world.admin, {"order": order})
    whole = await client.get(
        "/v1/appointments", params={"order": order, "limit": 100}, headers=world.admin.headers
    )
    alices = await walk(client, world.alice, {"order": order, "status": "booked"})

    assert len(pages) == 7
    assert [item["id"] for item in pages] == [item["id"] for item in whole.json()["items"]]
    keys = [(datetime.fromisoformat(item["start"]), item["id"]) for item in pages]
    assert keys == sorted(keys, reverse=order == "desc")
    assert {tied["alice"], tied["bob"]} <= {item["id"] for item in pages}
    expected = [*world.ids("a1", "a3"), tied["alice"]]
    assert [item["id"] for item in alices] == (expected if order == "asc" else expected[::-1])


async def test_a_garbage_cursor_is_422(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    patient = await accounts.create(Role.PATIENT)

    for cursor in (
        "garbage",
        "%%%",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'["2030-01-01T00:00:00", "' + str(uuid.uuid4()).encode() + b'"]')
        .decode()
        .rstrip("="),
        base64.urlsafe_b64encode(b'["not a time", "not an id"]').decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"starts_at": 1}').decode().rstrip("="),
    ):
        response = await client.get(
            "/v1/appointments", params={"cursor": cursor}, headers=patient.headers
        )
        assert response.status_code == 422, (cursor, response.text)
        assert_problem(response, 422, "validation_error")


# --- 404 for everyone else, never 403 ---------------------------------------------------------


async def test_appointments_of_others_are_not_found(
    client: httpx.AsyncClient, booking: Booking, worlds: Worlds
) -> None:
    world = await build_world(worlds)
    a1 = world.appointments["a1"]  # alice at the north clinic
    free = local_instant(world.day, time(15), world.north.timezone)
    unknown = await client.get(f"/v1/appointments/{uuid.uuid4()}", headers=world.admin.headers)
    not_found = assert_problem(unknown, 404, "not_found")

    async def attempts(viewer: Account) -> dict[str, httpx.Response]:
        base = f"/v1/appointments/{a1['id']}"
        out = {
            "get": await client.get(base, headers=viewer.headers),
            "cancel": await client.post(
                f"{base}/cancel", json={"reason": "mine now"}, headers=viewer.headers
            ),
            "reschedule": await client.post(
                f"{base}/reschedule",
                json={"start": free.isoformat()},
                headers={**viewer.headers, "Idempotency-Key": new_key()},
            ),
        }
        if viewer.user.role != Role.PATIENT.value:
            for action in ("check-in", "complete", "no-show"):
                out[action] = await client.post(f"{base}/{action}", headers=viewer.headers)
        return out

    for viewer in (
        world.bob,
        world.north_colleague.account,
        world.south.account,
        world.south_staff,
    ):
        for what, response in (await attempts(viewer)).items():
            assert response.status_code == 404, (viewer.user.role, what, response.text)
            body = assert_problem(response, 404, "not_found")
            # Indistinguishable from an appointment that does not exist.
            assert body["detail"] == not_found["detail"], what
            assert body["title"] == not_found["title"], what

    for viewer in (world.alice, world.north.account, world.north_staff, world.admin):
        read = await client.get(f"/v1/appointments/{a1['id']}", headers=viewer.headers)
        assert read.status_code == 200, read.text
        assert read.json()["status"] == "booked"
        assert read.json()["start"] == a1["start"]
        assert read.json()["cancel_reason"] is None
    assert free.isoformat() in {
        slot["start"] for slot in await booking.free_slots(world.north, world.day, world.day)
    }
    malformed = await client.get("/v1/appointments/not-an-id", headers=world.admin.headers)
    assert_problem(malformed, 422, "validation_error")


async def test_patients_may_not_record_visits(client: httpx.AsyncClient, worlds: Worlds) -> None:
    world = await build_world(worlds)
    own = world.appointments["a1"]
    others = world.appointments["a2"]

    for appointment in (own, others):
        for action in ("check-in", "complete", "no-show"):
            response = await client.post(
                f"/v1/appointments/{appointment['id']}/{action}", headers=world.alice.headers
            )
            assert response.status_code == 403, (action, response.text)
            assert_problem(response, 403, "forbidden")

    for appointment in (own, others):
        read = await client.get(
            f"/v1/appointments/{appointment['id']}", headers=world.admin.headers
        )
        assert read.json()["status"] == "booked"


async def test_who_may_act_on_an_appointment(
    client: httpx.AsyncClient, booking: Booking, worlds: Worlds
) -> None:
    world = await build_world(worlds)
    zone = world.north.timezone
    day = world.day + timedelta(days=3)

    async def book_north(hour: int, patient: Account) -> str:
        response = await booking.book(patient, world.north, local_instant(day, time(hour), zone))
        assert response.status_code == 201, response.text
        appointment_id: str = response.json()["id"]
        return appointment_id

    steps: list[tuple[Account, str, int]] = [
        (world.alice, "cancel", 9),
        (world.north.account, "cancel", 10),
        (world.north_staff, "cancel", 11),
        (world.admin, "cancel", 12),
        (world.north.account, "check-in", 13),
        (world.north_staff, "complete", 14),
        (world.admin, "no-show", 15),
        (world.north_staff, "check-in", 16),
    ]
    targets = {"cancel": "cancelled", "check-in": "checked_in", "complete": "completed"}
    targets["no-show"] = "no_show"
    for actor, action, hour in steps:
        appointment_id = await book_north(hour, world.alice)
        path = f"/v1/appointments/{appointment_id}/{action}"
        body = {"reason": f"by {actor.user.role}"} if action == "cancel" else None
        response = await client.post(path, json=body, headers=actor.headers)
        assert response.status_code == 200, (actor.user.role, action, response.text)
        assert response.json()["status"] == targets[action]
        if action == "cancel":
            assert response.json()["cancel_reason"] == f"by {actor.user.role}"

    for hour, actor in enumerate((world.north.account, world.north_staff, world.admin), start=9):
        appointment_id = await book_north(hour, world.bob)
        moved_to = local_instant(day + timedelta(days=1), time(hour), zone)
        response = await client.post(
            f"/v1/appointments/{appointment_id}/reschedule",
            json={"start": moved_to.isoformat()},
            headers={**actor.headers, "Idempotency-Key": new_key()},
        )
        assert response.status_code == 200, (actor.user.role, response.text)
        assert response.json()["start"] == moved_to.isoformat()
        assert response.json()["patient_id"] == str(world.bob.id)


# --- 401 without a token ----------------------------------------------------------------------


async def test_every_appointment_endpoint_requires_a_token(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    start = local_instant(next_local_day(provider.timezone), time(10), provider.timezone)
    appointment = await booking.book(patient, provider, start)
    assert appointment.status_code == 201, appointment.text
    base = f"/v1/appointments/{appointment.json()['id']}"
    key = {"Idempotency-Key": new_key()}
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/appointments", None),
        ("POST", "/v1/appointments", {"provider_id": str(provider.id), "start": start.isoformat()}),
        ("GET", base, None),
        ("POST", f"{base}/cancel", {"reason": "no"}),
        ("POST", f"{base}/reschedule", {"start": start.isoformat()}),
        ("POST", f"{base}/check-in", None),
        ("POST", f"{base}/complete", None),
        ("POST", f"{base}/no-show", None),
    ]

    for auth in (
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Basic dXNlcjpwdw=="},
    ):
        for method, path, body in calls:
            response = await client.request(method, path, json=body, headers={**auth, **key})
            assert response.status_code == 401, (auth, method, path, response.text)
            assert_problem(response, 401, "unauthorized")

    read = await client.get(base, headers=patient.headers)
    assert read.json()["status"] == "booked"
    assert read.json()["start"] == start.isoformat()
