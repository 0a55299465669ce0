"""Weekly schedules and time off over HTTP (DESIGN §4): who may manage them, validation, and how
they shape availability without touching booked appointments."""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta
from typing import Any

import httpx

from app.models import Role
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, local_instant, next_local_day
from tests.fixtures.problems import assert_problem
from tests.fixtures.world import Worlds


def schedule_path(provider_id: uuid.UUID | str) -> str:
    return f"/v1/providers/{provider_id}/schedule"


def time_off_path(provider_id: uuid.UUID | str) -> str:
    return f"/v1/providers/{provider_id}/time-off"


def rule(weekday: int, start: str, end: str) -> dict[str, Any]:
    return {"weekday": weekday, "start": start, "end": end}


def starts(slots: list[dict[str, str]]) -> list[str]:
    return [slot["start"] for slot in slots]


def local_starts(day_slots: list[dict[str, str]]) -> list[str]:
    """The local wall-clock "HH:MM" of each slot start."""
    return [datetime.fromisoformat(slot["start"]).strftime("%H:%M") for slot in day_slots]


def half_hours(first: str, last: str) -> list[str]:
    start = datetime.strptime(first, "%H:%M")
    end = datetime.strptime(last, "%H:%M")
    out = []
    while start <= end:
        out.append(start.strftime("%H:%M"))
        start += timedelta(minutes=30)
    return out


# --- weekly schedule --------------------------------------------------------------------------


async def test_schedule_is_replaced_by_the_provider_its_staff_and_an_admin(
    client: httpx.AsyncClient, worlds: Worlds
) -> None:
    people = await worlds.cast()
    provider = people.provider
    # Deliberately unsorted; the answer is sorted by weekday, then start.
    attempts = [
        (
            provider.headers,
            [rule(3, "14:00", "18:00"), rule(1, "09:00", "12:30"), rule(3, "08:00", "12:00")],
        ),
        (people.staff.headers, [rule(7, "10:00", "11:00"), rule(2, "07:05", "07:35")]),
        (people.admin.headers, [rule(5, "00:00", "23:59"), rule(4, "09:00", "17:00")]),
    ]

    for headers, rules in attempts:
        response = await client.put(
            schedule_path(provider.id), json={"rules": rules}, headers=headers
        )
        assert response.status_code == 200, response.text
        body = response.json()
        expected = sorted(rules, key=lambda r: (r["weekday"], r["start"]))
        assert body["rules"] == expected
        assert body["provider_id"] == str(provider.id)
        assert body["timezone"] == provider.timezone
        assert body["slot_minutes"] == provider.slot_minutes
        for reader in (provider.headers, people.staff.headers, people.admin.headers):
            read = await client.get(schedule_path(provider.id), headers=reader)
            assert read.status_code == 200, read.text
            assert read.json() == body


async def test_split_shifts_and_back_to_back_rules_are_allowed(
    client: httpx.AsyncClient, booking: Booking
) -> None:
    provider = await booking.provider(rules=())
    day = next_local_day(provider.timezone)
    weekday = day.isoweekday()
    rules = [
        rule(weekday, "13:00", "15:00"),
        rule(weekday, "08:00", "10:00"),
        rule(weekday, "10:00", "11:00"),  # starts exactly where the previous one ends
        rule(weekday % 7 + 1, "09:00", "09:30"),
    ]

    response = await client.put(
        schedule_path(provider.id), json={"rules": rules}, headers=provider.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["rules"] == sorted(rules, key=lambda r: (r["weekday"], r["start"]))
    slots = await booking.free_slots(provider, day, day)
    assert local_starts(slots) == half_hours("08:00", "10:30") + half_hours("13:00", "14:30")


async def test_an_empty_schedule_offers_nothing(
    client: httpx.AsyncClient, booking: Booking
) -> None:
    provider = await booking.provider()
    day = next_local_day(provider.timezone)
    assert len(await booking.free_slots(provider, day, day)) == 16

    response = await client.put(
        schedule_path(provider.id), json={"rules": []}, headers=provider.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["rules"] == []
    assert await booking.free_slots(provider, day, day + timedelta(days=6)) == []


async def test_invalid_schedules_are_422_and_change_nothing(
    client: httpx.AsyncClient, booking: Booking
) -> None:
    provider = await booking.provider(rules=())
    kept = [rule(1, "09:00", "12:00")]
    response = await client.put(
        schedule_path(provider.id), json={"rules": kept}, headers=provider.headers
    )
    assert response.status_code == 200, response.text
    invalid: dict[str, Any] = {
        "overlap": [rule(2, "09:00", "12:00"), rule(2, "11:30", "14:00")],
        "overlap unsorted": [
            rule(2, "11:30", "14:00"),
            rule(1, "09:00", "10:00"),
            rule(2, "09:00", "12:00"),
        ],
        "contained": [rule(2, "09:00", "17:00"), rule(2, "10:00", "11:00")],
        "duplicate": [rule(6, "09:00", "10:00"), rule(6, "09:00", "10:00")],
        "start equals end": [rule(1, "09:00", "09:00")],
        "start after end": [rule(1, "17:00", "09:00")],
        "weekday 0": [rule(0, "09:00", "10:00")],
        "weekday 8": [rule(8, "09:00", "10:00")],
        "24:00": [rule(1, "09:00", "24:00")],
        "9:00": [rule(1, "9:00", "10:00")],
        "09:60": [rule(1, "09:00", "09:60")],
        "seconds": [rule(1, "09:00:00", "10:00:00")],
        "not a time": [rule(1, "nine", "ten")],
        "missing end": [{"weekday": 1, "start": "09:00"}],
        "rules not a list": {"weekday": 1, "start": "09:00", "end": "10:00"},
    }

    for name, rules in invalid.items():
        response = await client.put(
            schedule_path(provider.id), json={"rules": rules}, headers=provider.headers
        )
        assert response.status_code == 422, (name, response.text)
        assert_problem(response, 422, "validation_error")
    missing = await client.put(schedule_path(provider.id), json={}, headers=provider.headers)
    assert_problem(missing, 422, "validation_error")

    current = await client.get(schedule_path(provider.id), headers=provider.headers)
    assert current.json()["rules"] == kept


async def test_schedule_permissions(client: httpx.AsyncClient, worlds: Worlds) -> None:
    people = await worlds.cast()
    path = schedule_path(people.provider.id)
    original = (await client.get(path, headers=people.admin.headers)).json()
    body = {"rules": [rule(1, "10:00", "11:00")]}

    for outsider in (people.other_provider.account, people.other_staff, people.patient):
        assert_problem(await client.get(path, headers=outsider.headers), 403, "forbidden")
        assert_problem(
            await client.put(path, json=body, headers=outsider.headers), 403, "forbidden"
        )
    assert_problem(await client.get(path), 401, "unauthorized")
    assert_problem(await client.put(path, json=body), 401, "unauthorized")

    unknown = schedule_path(uuid.uuid4())
    for caller in (people.admin, people.provider.account, people.patient):
        assert_problem(await client.get(unknown, headers=caller.headers), 404, "not_found")
        assert_problem(
            await client.put(unknown, json=body, headers=caller.headers), 404, "not_found"
        )
    # A patient's id is not a provider.
    patient_path = schedule_path(people.patient.id)
    assert_problem(
        await client.put(patient_path, json=body, headers=people.admin.headers), 404, "not_found"
    )
    malformed = await client.put(schedule_path("nope"), json=body, headers=people.admin.headers)
    assert_problem(malformed, 422, "validation_error")

    assert (await client.get(path, headers=people.admin.headers)).json() == original


async def test_replacing_the_schedule_keeps_booked_appointments(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(10, 0), provider.timezone)
    booked = await booking.book(patient, provider, start)
    assert booked.status_code == 201, booked.text
    appointment_id = booked.json()["id"]

    afternoons = [rule(weekday, "13:00", "17:00") for weekday in range(1, 8)]
    response = await client.put(
        schedule_path(provider.id), json={"rules": afternoons}, headers=provider.headers
    )
    assert response.status_code == 200, response.text

    for viewer in (patient, provider.account):
        read = await client.get(f"/v1/appointments/{appointment_id}", headers=viewer.headers)
        assert read.status_code == 200, read.text
        assert read.json()["status"] == "booked"
        assert read.json()["start"] == start.isoformat()
    # Availability follows the new template: mornings are gone, afternoons are offered.
    slots = await booking.free_slots(provider, day, day)
    assert local_starts(slots) == half_hours("13:00", "16:30")
    morning = local_instant(day + timedelta(days=1), time(10, 0), provider.timezone)
    assert_problem(await booking.book(patient, provider, morning), 422, "not_a_slot")
    afternoon = local_instant(day + timedelta(days=1), time(14, 0), provider.timezone)
    assert (await booking.book(patient, provider, afternoon)).status_code == 201


# --- time off ---------------------------------------------------------------------------------


async def test_time_off_hides_slots_until_it_is_deleted(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider(timezone="America/New_York")
    patient = await accounts.create(Role.PATIENT)
    day = next_local_day(provider.timezone)
    before = await booking.free_slots(provider, day, day)
    assert local_starts(before) == half_hours("09:00", "16:30")
    starts_at = local_instant(day, time(10, 15), provider.timezone)
    ends_at = local_instant(day, time(11, 0), provider.timezone)

    created = await client.post(
        time_off_path(provider.id),
        json={
            "starts_at": starts_at.isoformat(),
            "ends_at": ends_at.isoformat(),
            "reason": "Dentist",
        },
        headers=provider.headers,
    )

    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "provider_id", "starts_at", "ends_at", "reason"}
    assert body["provider_id"] == str(provider.id)
    assert datetime.fromisoformat(body["starts_at"]) == starts_at
    assert datetime.fromisoformat(body["ends_at"]) == ends_at
    assert datetime.fromisoformat(body["starts_at"]).utcoffset() is not None
    assert body["reason"] == "Dentist"
    during = await booking.free_slots(provider, day, day)
    # 10:00 and 10:30 overlap [10:15, 11:00); 11:00 starts as it ends, so it stays.
    assert local_starts(during) == [
        t for t in half_hours("09:00", "16:30") if t not in {"10:00", "10:30"}
    ]
    blocked = await booking.book(
        patient, provider, local_instant(day, time(10, 30), provider.timezone)
    )
    assert_problem(blocked, 422, "not_a_slot")
    other_day = await booking.free_slots(provider, day + timedelta(days=1), day + timedelta(days=1))
    assert len(other_day) == 16

    deleted = await client.delete(
        f"{time_off_path(provider.id)}/{body['id']}", headers=provider.headers
    )

    assert deleted.status_code == 204, deleted.text
    assert deleted.content == b""
    assert await booking.free_slots(provider, day, day) == before
    again = await client.delete(
        f"{time_off_path(provider.id)}/{body['id']}", headers=provider.headers
    )
    assert_problem(again, 404, "not_found")
    unblocked = await booking.book(
        patient, provider, local_instant(day, time(10, 30), provider.timezone)
    )
    assert unblocked.status_code == 201, unblocked.text


async def test_time_off_over_whole_days(client: httpx.AsyncClient, booking: Booking) -> None:
    provider = await booking.provider(timezone="Asia/Kolkata", slot_minutes=60)
    day = next_local_day(provider.timezone)
    starts_at = local_instant(day, time(0, 0), provider.timezone)

    created = await client.post(
        time_off_path(provider.id),
        json={
            "starts_at": starts_at.isoformat(),
            "ends_at": (starts_at + timedelta(days=2)).isoformat(),
        },
        headers=provider.headers,
    )

    assert created.status_code == 201, created.text
    assert created.json()["reason"] == ""
    slots = await booking.free_slots(provider, day - timedelta(days=1), day + timedelta(days=2))
    days = {datetime.fromisoformat(s["start"]).date() for s in slots}
    assert days == {day - timedelta(days=1), day + timedelta(days=2)}


async def test_invalid_time_off_is_422(client: httpx.AsyncClient, booking: Booking) -> None:
    provider = await booking.provider()
    day = next_local_day(provider.timezone)
    start = local_instant(day, time(10, 0), provider.timezone)
    invalid: dict[str, dict[str, Any]] = {
        "ends before it starts": {
            "starts_at": start.isoformat(),
            "ends_at": (start - timedelta(hours=1)).isoformat(),
        },
        "ends as it starts": {"starts_at": start.isoformat(), "ends_at": start.isoformat()},
        "naive start": {
            "starts_at": start.replace(tzinfo=None).isoformat(),
            "ends_at": (start + timedelta(hours=1)).isoformat(),
        },
        "naive end": {
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(hours=1)).replace(tzinfo=None).isoformat(),
        },
        "date only": {
            "starts_at": day.isoformat(),
            "ends_at": (day + timedelta(days=1)).isoformat(),
        },
        "not a time": {"starts_at": "soon", "ends_at": "later"},
        "missing end": {"starts_at": start.isoformat()},
        "reason too long": {
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(hours=1)).isoformat(),
            "reason": "x" * 501,
        },
    }

    for name, body in invalid.items():
        response = await client.post(
            time_off_path(provider.id), json=body, headers=provider.headers
        )
        assert response.status_code == 422, (name, response.text)
        assert_problem(response, 422, "validation_error")

    assert len(await booking.free_slots(provider, day, day)) == 16


async def test_deleting_unknown_time_off_is_404(
    client: httpx.AsyncClient, booking: Booking, worlds: Worlds
) -> None:
    people = await worlds.cast()
    day = next_local_day(people.provider.timezone)
    start = local_instant(day, time(9, 0), people.provider.timezone)
    body = {"starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=2)).isoformat()}
    theirs = await client.post(
        time_off_path(people.other_provider.id), json=body, headers=people.other_provider.headers
    )
    assert theirs.status_code == 201, theirs.text

    unknown = await client.delete(
        f"{time_off_path(people.provider.id)}/{uuid.uuid4()}", headers=people.provider.headers
    )
    # Another provider's time off is not found under this provider's path.
    mismatched = await client.delete(
        f"{time_off_path(people.provider.id)}/{theirs.json()['id']}",
        headers=people.provider.headers,
    )
    malformed = await client.delete(
        f"{time_off_path(people.provider.id)}/nope", headers=people.provider.headers
    )
    unknown_provider = await client.delete(
        f"{time_off_path(uuid.uuid4())}/{theirs.json()['id']}", headers=people.admin.headers
    )
    unknown_provider_post = await client.post(
        time_off_path(uuid.uuid4()), json=body, headers=people.admin.headers
    )

    assert_problem(unknown, 404, "not_found")
    assert_problem(mismatched, 404, "not_found")
    assert_problem(malformed, 422, "validation_error")
    assert_problem(unknown_provider, 404, "not_found")
    assert_problem(unknown_provider_post, 404, "not_found")
    slots = await booking.free_slots(people.other_provider, day, day)
    assert local_starts(slots) == half_hours("11:00", "16:30")


async def test_time_off_permissions(
    client: httpx.AsyncClient, booking: Booking, worlds: Worlds
) -> None:
    people = await worlds.cast()
    provider = people.provider
    day = next_local_day(provider.timezone)

    def body(hour: int) -> dict[str, str]:
        start = local_instant(day, time(hour, 0), provider.timezone)
        return {"starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=1)).isoformat()}

    created: list[str] = []
    for hour, manager in enumerate((provider.account, people.staff, people.admin), start=9):
        response = await client.post(
            time_off_path(provider.id), json=body(hour), headers=manager.headers
        )
        assert response.status_code == 201, response.text
        created.append(response.json()["id"])
    assert local_starts(await booking.free_slots(provider, day, day)) == half_hours(
        "12:00", "16:30"
    )

    for outsider in (people.other_provider.account, people.other_staff, people.patient):
        refused = await client.post(
            time_off_path(provider.id), json=body(14), headers=outsider.headers
        )
        assert_problem(refused, 403, "forbidden")
        refused_delete = await client.delete(
            f"{time_off_path(provider.id)}/{created[0]}", headers=outsider.headers
        )
        assert_problem(refused_delete, 403, "forbidden")
    assert_problem(
        await client.post(time_off_path(provider.id), json=body(14)), 401, "unauthorized"
    )
    assert_problem(
        await client.delete(f"{time_off_path(provider.id)}/{created[0]}"), 401, "unauthorized"
    )
    assert local_starts(await booking.free_slots(provider, day, day)) == half_hours(
        "12:00", "16:30"
    )

    for time_off_id, manager in zip(
        created, (people.admin, people.staff, provider.account), strict=True
    ):
        response = await client.delete(
            f"{time_off_path(provider.id)}/{time_off_id}", headers=manager.headers
        )
        assert response.status_code == 204, response.text
    assert local_starts(await booking.free_slots(provider, day, day)) == half_hours(
        "09:00", "16:30"
    )
