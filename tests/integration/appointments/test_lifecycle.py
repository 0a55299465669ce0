"""The appointment lifecycle over HTTP (DESIGN §4): booking validation, the status machine,
cancelling and rescheduling, and the outbox event each change writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.kit.db import Database
from app.models import OutboxEvent, Role
from tests.fixtures.app import Account, Accounts
from tests.fixtures.booking import (
    APPOINTMENT_KEYS,
    Booking,
    ProviderSetup,
    local_instant,
    next_local_day,
)
from tests.fixtures.problems import assert_problem

# action (URL suffix) -> the status it leads to; reschedule keeps the appointment booked.
ACTIONS = {
    "check-in": "checked_in",
    "complete": "completed",
    "no-show": "no_show",
    "cancel": "cancelled",
    "reschedule": "booked",
}
# How to drive a fresh (booked) appointment into each status.
DRIVE = {
    "booked": [],
    "checked_in": ["check-in"],
    "completed": ["complete"],
    "cancelled": ["cancel"],
    "no_show": ["no-show"],
}
# The status machine of DESIGN §4 "Settled details"; everything else is invalid_transition.
ALLOWED = {
    "booked": {"check-in", "complete", "no-show", "cancel", "reschedule"},
    "checked_in": {"complete", "no-show"},
    "completed": set(),
    "cancelled": set(),
    "no_show": set(),
}


def new_key() -> str:
    return f"lifecycle-{uuid.uuid4().hex}"


async def act(
    client: httpx.AsyncClient,
    appointment_id: str,
    action: str,
    actor: Account,
    *,
    start: datetime | None = None,
    reason: str = "",
) -> httpx.Response:
    path = f"/v1/appointments/{appointment_id}/{action}"
    if action == "reschedule":
        assert start is not None
        return await client.post(
            path,
            json={"start": start.isoformat()},
            headers={**actor.headers, "Idempotency-Key": new_key()},
        )
    if action == "cancel":
        return await client.post(path, json={"reason": reason}, headers=actor.headers)
    return await client.post(path, headers=actor.headers)


async def fetch(client: httpx.AsyncClient, appointment_id: str, viewer: Account) -> dict[str, Any]:
    response = await client.get(f"/v1/appointments/{appointment_id}", headers=viewer.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def booked(
    booking: Booking, patient: Account, provider: ProviderSetup, start: datetime
) -> dict[str, Any]:
    response = await booking.book(patient, provider, start)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def outbox_events(database: Database) -> list[tuple[str, dict[str, Any]]]:
    async with database.reading(primary=True) as session:
        rows = (
            await session.execute(
                select(OutboxEvent.topic, OutboxEvent.payload).order_by(OutboxEvent.id)
            )
        ).all()
    return [(row.topic, row.payload) for row in rows]


def slot_starts(slots: list[dict[str, str]]) -> set[str]:
    return {slot["start"] for slot in slots}


# --- the status machine -----------------------------------------------------------------------


@pytest.mark.parametrize("state", list(DRIVE))
async def test_status_machine(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, state: str
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    reschedule_to = local_instant(day, time(15, 0), provider.timezone)

    # action -> (HTTP status, problem code, status afterwards, start afterwards)
    outcomes: dict[str, tuple[int, str, str, str]] = {}
    expected: dict[str, tuple[int, str, str, str]] = {}
    responses: dict[str, httpx.Response] = {}
    for index, action in enumerate(ACTIONS):
        start = local_instant(day, time(9 + index, 0), provider.timezone)
        appointment = await booked(booking, patient, provider, start)
        for step in DRIVE[state]:
            driven = await act(client, appointment["id"], step, provider.account)
            assert driven.status_code == 200, driven.text
        assert (await fetch(client, appointment["id"], patient))["status"] == state

        response = await act(
            client, appointment["id"], action, provider.account, start=reschedule_to
        )

        after = await fetch(client, appointment["id"], patient)
        code = "" if response.status_code == 200 else str(response.json().get("code"))
        outcomes[action] = (response.status_code, code, after["status"], after["start"])
        responses[action] = response
        if action in ALLOWED[state]:
            moved_to = reschedule_to if action == "reschedule" else start
            expected[action] = (200, "", ACTIONS[action], moved_to.isoformat())
        else:
            expected[action] = (409, "invalid_transition", state, start.isoformat())

    assert outcomes == expected
    for action, response in responses.items():
        if action in ALLOWED[state]:
            assert response.json()["status"] == ACTIONS[action], (action, response.text)
        else:
            assert_problem(response, 409, "invalid_transition")


async def test_check_in_then_complete_and_check_in_then_no_show(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    first = await booked(booking, patient, provider, local_instant(day, time(9), provider.timezone))
    second = await booked(
        booking, patient, provider, local_instant(day, time(10), provider.timezone)
    )

    for appointment, final in ((first, "complete"), (second, "no-show")):
        checked_in = await act(client, appointment["id"], "check-in", provider.account)
        assert checked_in.status_code == 200, checked_in.text
        assert checked_in.json()["status"] == "checked_in"
        done = await act(client, appointment["id"], final, provider.account)
        assert done.status_code == 200, done.text
        assert done.json()["status"] == ACTIONS[final]
        # updated_at moves forward with each change; created_at stays.
        assert done.json()["created_at"] == appointment["created_at"]
        assert datetime.fromisoformat(done.json()["updated_at"]) > datetime.fromisoformat(
            checked_in.json()["updated_at"]
        )
        assert (await fetch(client, appointment["id"], patient))["status"] == ACTIONS[final]


async def test_checked_in_slot_stays_taken_and_final_states_free_it(
    booking: Booking, accounts: Accounts, client: httpx.AsyncClient
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    times = {
        action: local_instant(day, time(9 + index), provider.timezone)
        for index, action in enumerate(("check-in", "complete", "no-show", "cancel"))
    }
    for action, start in times.items():
        appointment = await booked(booking, patient, provider, start)
        response = await act(client, appointment["id"], action, provider.account)
        assert response.status_code == 200, response.text

    free = slot_starts(await booking.free_slots(provider, day, day))

    # Only booked and checked_in hold a slot (the exclusion constraint's active statuses).
    assert times["check-in"].isoformat() not in free
    for action in ("complete", "no-show", "cancel"):
        assert times[action].isoformat() in free, action


# --- cancel -----------------------------------------------------------------------------------


async def test_cancel_stores_the_reason_and_frees_the_slot(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT, full_name="Pat One")
    other = await accounts.create(Role.PATIENT, full_name="Pat Two")
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(11, 30), provider.timezone)
    appointment = await booked(booking, patient, provider, start)
    assert appointment["cancel_reason"] is None
    assert start.isoformat() not in slot_starts(await booking.free_slots(provider, day, day))
    assert_problem(await booking.book(other, provider, start), 409, "slot_unavailable")

    response = await act(client, appointment["id"], "cancel", patient, reason="Feeling better")

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == APPOINTMENT_KEYS
    assert body["id"] == appointment["id"]
    assert body["status"] == "cancelled"
    assert body["cancel_reason"] == "Feeling better"
    assert body["start"] == start.isoformat()
    stored = await fetch(client, appointment["id"], patient)
    assert stored["status"] == "cancelled"
    assert stored["cancel_reason"] == "Feeling better"
    assert start.isoformat() in slot_starts(await booking.free_slots(provider, day, day))

    rebooked = await booking.book(other, provider, start)
    assert rebooked.status_code == 201, rebooked.text
    assert rebooked.json()["id"] != appointment["id"]
    assert rebooked.json()["patient_id"] == str(other.id)
    assert (await fetch(client, appointment["id"], patient))["status"] == "cancelled"
    again = await act(client, appointment["id"], "cancel", patient, reason="twice")
    assert_problem(again, 409, "invalid_transition")
    assert (await fetch(client, appointment["id"], patient))["cancel_reason"] == "Feeling better"


async def test_cancel_without_a_body_or_with_a_too_long_reason(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    appointment = await booked(
        booking, patient, provider, local_instant(day, time(9), provider.timezone)
    )
    path = f"/v1/appointments/{appointment['id']}/cancel"

    too_long = await client.post(path, json={"reason": "x" * 501}, headers=patient.headers)
    assert_problem(too_long, 422, "validation_error")
    assert (await fetch(client, appointment["id"], patient))["status"] == "booked"

    empty = await client.post(path, json={}, headers=patient.headers)
    assert empty.status_code == 200, empty.text
    assert empty.json()["status"] == "cancelled"


# --- reschedule -------------------------------------------------------------------------------


async def test_reschedule_moves_the_appointment(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider(timezone="Australia/Sydney")
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    old = local_instant(day, time(9, 30), provider.timezone)
    new = local_instant(day + timedelta(days=1), time(14, 0), provider.timezone)
    appointment = await booked(booking, patient, provider, old)

    response = await act(client, appointment["id"], "reschedule", patient, start=new)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == APPOINTMENT_KEYS
    assert body["id"] == appointment["id"]
    assert body["status"] == "booked"
    assert body["start"] == new.isoformat()
    assert body["end"] == (new + timedelta(minutes=30)).isoformat()
    assert body["provider_id"] == appointment["provider_id"]
    assert body["patient_id"] == appointment["patient_id"]
    assert body["created_at"] == appointment["created_at"]
    stored = await fetch(client, appointment["id"], patient)
    assert stored["start"] == new.isoformat()
    assert stored["end"] == body["end"]
    free = slot_starts(await booking.free_slots(provider, day, day + timedelta(days=1)))
    assert old.isoformat() in free
    assert new.isoformat() not in free
    listed = await client.get("/v1/appointments", headers=patient.headers)
    assert [item["start"] for item in listed.json()["items"]] == [new.isoformat()]


async def test_reschedule_refusals_leave_the_appointment_alone(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    other = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    zone = provider.timezone
    start = local_instant(day, time(10), zone)
    appointment = await booked(booking, patient, provider, start)
    taken = local_instant(day, time(11), zone)
    await booked(booking, other, provider, taken)
    path = f"/v1/appointments/{appointment['id']}/reschedule"

    occupied = await act(client, appointment["id"], "reschedule", patient, start=taken)
    assert_problem(occupied, 409, "slot_unavailable")
    for off_grid in (
        local_instant(day, time(10, 10), zone),
        local_instant(day, time(8, 30), zone),
        local_instant(day, time(17, 0), zone),
        local_instant(day, time(12, 0, 30), zone),
        local_instant(day - timedelta(days=3), time(10), zone),  # in the past
        local_instant(day + timedelta(days=120), time(10), zone),  # beyond the horizon
    ):
        response = await act(client, appointment["id"], "reschedule", patient, start=off_grid)
        assert response.status_code == 422, (off_grid, response.text)
        assert_problem(response, 422, "not_a_slot")
    naive = await client.post(
        path,
        json={"start": local_instant(day, time(12), zone).replace(tzinfo=None).isoformat()},
        headers={**patient.headers, "Idempotency-Key": new_key()},
    )
    assert_problem(naive, 422, "validation_error")
    no_key = await client.post(
        path,
        json={"start": local_instant(day, time(12), zone).isoformat()},
        headers=patient.headers,
    )
    assert_problem(no_key, 400, "idempotency_key_missing")
    blank_key = await client.post(
        path,
        json={"start": local_instant(day, time(12), zone).isoformat()},
        headers={**patient.headers, "Idempotency-Key": "   "},
    )
    assert_problem(blank_key, 400, "idempotency_key_missing")

    stored = await fetch(client, appointment["id"], patient)
    assert stored["status"] == "booked"
    assert stored["start"] == start.isoformat()
    free = slot_starts(await booking.free_slots(provider, day, day))
    assert start.isoformat() not in free
    assert local_instant(day, time(12), zone).isoformat() in free

    cancelled = await act(client, appointment["id"], "cancel", patient)
    assert cancelled.status_code == 200, cancelled.text
    moved = await act(
        client, appointment["id"], "reschedule", patient, start=local_instant(day, time(12), zone)
    )
    assert_problem(moved, 409, "invalid_transition")
    stored = await fetch(client, appointment["id"], patient)
    assert stored["status"] == "cancelled"
    assert stored["start"] == start.isoformat()
    assert local_instant(day, time(12), zone).isoformat() in slot_starts(
        await booking.free_slots(provider, day, day)
    )


async def test_reschedule_into_time_off_or_over_the_patients_other_visit(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    clinic_id = await booking.clinic()
    provider = await booking.provider(clinic_id=clinic_id)
    elsewhere = await booking.provider(clinic_id=clinic_id, full_name="Dr. Elsewhere")
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    zone = provider.timezone
    appointment = await booked(booking, patient, provider, local_instant(day, time(9), zone))
    await booked(booking, patient, elsewhere, local_instant(day, time(13), zone))
    away = await client.post(
        f"/v1/providers/{provider.id}/time-off",
        json={
            "starts_at": local_instant(day, time(15), zone).isoformat(),
            "ends_at": local_instant(day, time(16), zone).isoformat(),
        },
        headers=provider.headers,
    )
    assert away.status_code == 201, away.text

    into_time_off = await act(
        client, appointment["id"], "reschedule", patient, start=local_instant(day, time(15), zone)
    )
    over_own_visit = await act(
        client, appointment["id"], "reschedule", patient, start=local_instant(day, time(13), zone)
    )
    # Moving within its own slot's neighbourhood is fine: the appointment does not block itself.
    to_itself = await act(
        client, appointment["id"], "reschedule", patient, start=local_instant(day, time(9), zone)
    )

    assert_problem(into_time_off, 422, "not_a_slot")
    assert_problem(over_own_visit, 409, "slot_unavailable")
    assert to_itself.status_code == 200, to_itself.text
    stored = await fetch(client, appointment["id"], patient)
    assert stored["start"] == local_instant(day, time(9), zone).isoformat()
    assert stored["status"] == "booked"


# --- the outbox -------------------------------------------------------------------------------


async def test_every_change_writes_an_outbox_event(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts, database: Database
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    zone = provider.timezone
    visited = await booked(booking, patient, provider, local_instant(day, time(9), zone))
    cancelled = await booked(booking, patient, provider, local_instant(day, time(10), zone))
    missed = await booked(booking, patient, provider, local_instant(day, time(11), zone))
    moved = await booked(booking, patient, provider, local_instant(day, time(12), zone))
    for appointment_id, action in (
        (visited["id"], "check-in"),
        (visited["id"], "complete"),
        (cancelled["id"], "cancel"),
        (missed["id"], "check-in"),
        (missed["id"], "no-show"),
    ):
        response = await act(client, appointment_id, action, provider.account, reason="Sick")
        assert response.status_code == 200, response.text
    rescheduled = await act(
        client, moved["id"], "reschedule", patient, start=local_instant(day, time(14), zone)
    )
    assert rescheduled.status_code == 200, rescheduled.text
    # Refused requests write nothing.
    refused = await act(client, cancelled["id"], "complete", provider.account)
    assert_problem(refused, 409, "invalid_transition")
    taken = await booking.book(patient, provider, local_instant(day, time(9), zone))
    assert taken.status_code == 201, taken.text  # completed visits free their slot
    clash = await booking.book(patient, provider, local_instant(day, time(9), zone))
    assert_problem(clash, 409, "slot_unavailable")

    events = [
        (topic, payload)
        for topic, payload in await outbox_events(database)
        if topic.startswith("appointment.")
    ]

    by_appointment: dict[str, list[str]] = {}
    for topic, payload in events:
        by_appointment.setdefault(payload["appointment_id"], []).append(topic)
        assert payload["provider_id"] == str(provider.id)
        assert payload["patient_id"] == str(patient.id)
        assert payload["clinic_id"] == str(provider.clinic_id)
    assert by_appointment == {
        visited["id"]: ["appointment.booked", "appointment.checked_in", "appointment.completed"],
        cancelled["id"]: ["appointment.booked", "appointment.cancelled"],
        missed["id"]: ["appointment.booked", "appointment.checked_in", "appointment.no_show"],
        moved["id"]: ["appointment.booked", "appointment.rescheduled"],
        taken.json()["id"]: ["appointment.booked"],
    }
    (moved_event,) = [p for t, p in events if t == "appointment.rescheduled"]
    assert datetime.fromisoformat(moved_event["starts_at"]) == local_instant(day, time(14), zone)
    assert datetime.fromisoformat(moved_event["old_starts_at"]) == local_instant(
        day, time(12), zone
    )
    (cancel_event,) = [p for t, p in events if t == "appointment.cancelled"]
    assert cancel_event["reason"] == "Sick"


# --- booking validation -----------------------------------------------------------------------


async def test_booking_outside_the_bookable_grid_is_not_a_slot(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider(timezone="UTC")
    patient = await accounts.create(Role.PATIENT)
    today = datetime.now(UTC).date()
    day = next_local_day("UTC")
    off = await client.post(
        f"/v1/providers/{provider.id}/time-off",
        json={
            "starts_at": local_instant(day, time(12), "UTC").isoformat(),
            "ends_at": local_instant(day, time(13), "UTC").isoformat(),
        },
        headers=provider.headers,
    )
    assert off.status_code == 201, off.text
    refused = {
        "off the grid": local_instant(day, time(10, 10), "UTC"),
        "seconds off the grid": local_instant(day, time(10, 0, 1), "UTC"),
        "before the rules": local_instant(day, time(8, 30), "UTC"),
        "slot would end after the rule": local_instant(day, time(17), "UTC"),
        "in the past": local_instant(today - timedelta(days=1), time(10), "UTC"),
        "beyond the horizon": local_instant(today + timedelta(days=91), time(10), "UTC"),
        "far beyond the horizon": local_instant(today + timedelta(days=400), time(10), "UTC"),
        "in time off": local_instant(day, time(12), "UTC"),
        "overlapping the end of time off": local_instant(day, time(12, 30), "UTC"),
    }

    for name, start in refused.items():
        response = await booking.book(patient, provider, start)
        assert response.status_code == 422, (name, response.text)
        assert_problem(response, 422, "not_a_slot")

    # The same wall-clock times on bookable days are fine: the refusals were for the reason named.
    for start in (
        local_instant(day, time(10), "UTC"),
        local_instant(today + timedelta(days=89), time(10), "UTC"),
        local_instant(day, time(13), "UTC"),
    ):
        response = await booking.book(patient, provider, start)
        assert response.status_code == 201, response.text
    listed = await client.get("/v1/appointments", headers=patient.headers)
    assert len(listed.json()["items"]) == 3


async def test_booking_within_the_minimum_notice_is_not_a_slot(
    booking: Booking, accounts: Accounts
) -> None:
    # Slots every 15 minutes around the clock, so one always starts within the next hour.
    provider = await booking.provider(
        timezone="UTC",
        slot_minutes=15,
        rules=[(day, time(0, 0), time(23, 59)) for day in range(1, 8)],
    )
    patient = await accounts.create(Role.PATIENT)
    now = datetime.now(UTC)
    soon = now.replace(second=0, microsecond=0) + timedelta(minutes=15 - now.minute % 15 + 15)
    if soon.time() >= time(23, 45):  # 23:45 would end after the 23:59 rule end
        soon += timedelta(minutes=15)
    assert soon - now < timedelta(minutes=60)
    later = soon + timedelta(days=1)
    if later.time() >= time(23, 45):
        later += timedelta(minutes=15)

    too_soon = await booking.book(patient, provider, soon)
    fine = await booking.book(patient, provider, later)

    assert_problem(too_soon, 422, "not_a_slot")
    assert fine.status_code == 201, fine.text
    assert soon.isoformat() not in slot_starts(
        await booking.free_slots(provider, soon.date(), soon.date())
    )


async def test_booking_request_validation(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(10), provider.timezone)

    async def post(body: dict[str, Any], *, with_key: bool = True) -> httpx.Response:
        headers = {**patient.headers}
        if with_key:
            headers["Idempotency-Key"] = new_key()
        return await client.post("/v1/appointments", json=body, headers=headers)

    naive = await post({"provider_id": str(provider.id), "start": "2030-01-07T10:00:00"})
    naive_local = await post(
        {"provider_id": str(provider.id), "start": start.replace(tzinfo=None).isoformat()}
    )
    date_only = await post({"provider_id": str(provider.id), "start": day.isoformat()})
    missing_start = await post({"provider_id": str(provider.id)})
    bad_provider_id = await post({"provider_id": "nope", "start": start.isoformat()})
    unknown_provider = await post({"provider_id": str(uuid.uuid4()), "start": start.isoformat()})
    patient_as_provider = await post({"provider_id": str(patient.id), "start": start.isoformat()})
    no_key = await post(
        {"provider_id": str(provider.id), "start": start.isoformat()}, with_key=False
    )

    for response in (naive, naive_local, date_only, missing_start, bad_provider_id):
        assert_problem(response, 422, "validation_error")
    assert_problem(unknown_provider, 404, "not_found")
    assert_problem(patient_as_provider, 404, "not_found")
    assert_problem(no_key, 400, "idempotency_key_missing")
    assert start.isoformat() in slot_starts(await booking.free_slots(provider, day, day))


async def test_patient_books_for_themselves(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider(specialty="Physiotherapy", full_name="Dr. Flex")
    patient = await accounts.create(Role.PATIENT, full_name="Pat Self")
    other = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(10), provider.timezone)

    for_other = await client.post(
        "/v1/appointments",
        json={
            "provider_id": str(provider.id),
            "start": start.isoformat(),
            "patient_id": str(other.id),
        },
        headers={**patient.headers, "Idempotency-Key": new_key()},
    )
    assert_problem(for_other, 403, "forbidden")
    response = await booking.book(patient, provider, start)

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == APPOINTMENT_KEYS
    assert body["provider_id"] == str(provider.id)
    assert body["patient_id"] == str(patient.id)
    assert body["clinic_id"] == str(provider.clinic_id)
    assert body["start"] == start.isoformat()
    assert body["end"] == (start + timedelta(minutes=30)).isoformat()
    assert body["status"] == "booked"
    assert body["cancel_reason"] is None
    assert body["provider"] == {
        "id": str(provider.id),
        "full_name": "Dr. Flex",
        "specialty": "Physiotherapy",
    }
    assert body["patient"] == {"id": str(patient.id), "full_name": "Pat Self"}
    assert await fetch(client, body["id"], patient) == body


async def test_staff_and_admins_book_for_a_patient(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    clinic_id = await booking.clinic(name="Home")
    other_clinic_id = await booking.clinic(name="Away")
    provider = await booking.provider(clinic_id=clinic_id)
    elsewhere = await booking.provider(clinic_id=other_clinic_id)
    staff = await accounts.create(Role.STAFF, clinic_id=clinic_id)
    admin = await accounts.create(Role.ADMIN)
    patient = await accounts.create(Role.PATIENT, full_name="Booked For")
    day = next_local_day(provider.timezone)

    async def book_as(
        actor: Account, target: ProviderSetup, hour: int, patient_id: uuid.UUID | None
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "provider_id": str(target.id),
            "start": local_instant(day, time(hour), target.timezone).isoformat(),
        }
        if patient_id is not None:
            body["patient_id"] = str(patient_id)
        return await client.post(
            "/v1/appointments", json=body, headers={**actor.headers, "Idempotency-Key": new_key()}
        )

    staff_without_patient = await book_as(staff, provider, 9, None)
    admin_without_patient = await book_as(admin, provider, 9, None)
    staff_for_a_provider = await book_as(staff, provider, 9, provider.id)
    staff_for_unknown = await book_as(staff, provider, 9, uuid.uuid4())
    staff_elsewhere = await book_as(staff, elsewhere, 9, patient.id)
    by_staff = await book_as(staff, provider, 10, patient.id)
    by_admin = await book_as(admin, elsewhere, 11, patient.id)
    by_provider = await book_as(provider.account, provider, 12, patient.id)
    by_provider_bare = await book_as(provider.account, provider, 12, None)

    assert_problem(staff_without_patient, 422, "validation_error")
    assert_problem(admin_without_patient, 422, "validation_error")
    assert_problem(staff_for_a_provider, 422, "validation_error")
    assert_problem(staff_for_unknown, 422, "validation_error")
    assert_problem(staff_elsewhere, 403, "forbidden")
    assert_problem(by_provider, 403, "forbidden")
    assert_problem(by_provider_bare, 403, "forbidden")
    for response in (by_staff, by_admin):
        assert response.status_code == 201, response.text
        assert response.json()["patient_id"] == str(patient.id)
        assert response.json()["patient"] == {"id": str(patient.id), "full_name": "Booked For"}
    assert by_admin.json()["clinic_id"] == str(other_clinic_id)
    mine = await client.get("/v1/appointments", headers=patient.headers)
    assert {item["id"] for item in mine.json()["items"]} == {
        by_staff.json()["id"],
        by_admin.json()["id"],
    }


async def test_a_patient_cannot_hold_two_overlapping_visits(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    clinic_id = await booking.clinic()
    first = await booking.provider(clinic_id=clinic_id, full_name="Dr. A")
    second = await booking.provider(clinic_id=clinic_id, full_name="Dr. B", slot_minutes=60)
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(first.timezone)
    ten = local_instant(day, time(10), first.timezone)
    at_a = await booked(booking, patient, first, ten)

    same_time = await booking.book(patient, second, ten)
    # B's 09:00-10:00 hour ends as A's visit starts: back to back is fine.
    back_to_back = await booking.book(patient, second, ten - timedelta(hours=1))

    assert_problem(same_time, 409, "slot_unavailable")
    assert back_to_back.status_code == 201, back_to_back.text
    mine = await client.get("/v1/appointments", headers=patient.headers)
    assert [item["id"] for item in mine.json()["items"]] == [
        back_to_back.json()["id"],
        at_a["id"],
    ]
    # B's 10:00 slot itself was free all along (the refusal was the patient's overlap)...
    assert ten.isoformat() in slot_starts(await booking.free_slots(second, day, day))
    # ...and once the visit at A is cancelled, the patient may take it.
    cancelled = await act(client, at_a["id"], "cancel", patient)
    assert cancelled.status_code == 200, cancelled.text
    at_b = await booking.book(patient, second, ten)
    assert at_b.status_code == 201, at_b.text


async def test_a_taken_slot_is_409(booking: Booking, accounts: Accounts) -> None:
    provider = await booking.provider()
    first = await accounts.create(Role.PATIENT)
    second = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(16, 30), provider.timezone)

    assert (await booking.book(first, provider, start)).status_code == 201
    clash = await booking.book(second, provider, start)

    assert_problem(clash, 409, "slot_unavailable")
    assert start.isoformat() not in slot_starts(await booking.free_slots(provider, day, day))
