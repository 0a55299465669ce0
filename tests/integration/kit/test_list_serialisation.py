"""Lists are serialised once, from rows: the bytes must stay those of the pydantic models they
replaced, for every zone, across DST changes, with microseconds and unusual text, page after
page (the cursors included).

The reference is the single-appointment endpoint, which still goes through `AppointmentOut`
and FastAPI's own serialisation: a listed item must be byte-for-byte that body, and a page
byte-for-byte `Page[AppointmentOut]`'s JSON of those items. A status change (cancel, check-in,
complete, no-show) answers with an item built the same way.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from sqlalchemy import select, text

from app.appointments.schemas import AppointmentOut
from app.kit.db import Database
from app.kit.pagination import Page, encode_cursor
from app.models import Appointment, AppointmentStatus, Provider, Role, User
from app.records.schemas import RecordWithUrl
from tests.fixtures.app import Accounts
from tests.fixtures.booking import Booking, next_local_day
from tests.fixtures.records import CareTeam, add_records

# Zones with DST both ways, half- and quarter-hour offsets, and none at all.
ZONES = (
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/St_Johns",
    "UTC",
)
# Instants either side of the 2026 changes (EU 29 Mar / 25 Oct, US 8 Mar / 1 Nov, southern
# hemisphere 5 Apr / 4 Oct), one with microseconds.
INSTANTS = (
    datetime(2026, 3, 8, 6, 30, tzinfo=UTC),
    datetime(2026, 3, 8, 7, 30, tzinfo=UTC),
    datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
    datetime(2026, 4, 4, 14, 45, tzinfo=UTC),
    datetime(2026, 10, 3, 15, 15, tzinfo=UTC),
    datetime(2026, 10, 25, 0, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
)
ODD_TEXT = 'Zoë «Ñ» \u2028 "quoted" \\ back/slash \t tab \x01 ctl \U0001f600'


async def _seed(booking: Booking, accounts: Accounts) -> tuple[list[uuid.UUID], str]:
    """Appointments of a patient with providers in every zone; returns their ids and the
    patient's token."""
    patient = await accounts.create(Role.PATIENT, full_name=ODD_TEXT)
    providers = [
        await booking.provider(timezone=zone, full_name=f"Dr. {zone} {ODD_TEXT}") for zone in ZONES
    ]
    ids: list[uuid.UUID] = []
    async with booking.database.unit_of_work() as session:
        patient_key = await session.scalar(select(User.key).where(User.id == patient.id))
        for index, provider in enumerate(providers):
            row = await session.get(Provider, provider.id)
            assert row is not None
            assert patient_key is not None
            for step, instant in enumerate(INSTANTS):
                # Distinct per provider, so the patient's visits never overlap.
                starts_at = instant + timedelta(minutes=index * 3, days=step % 2)
                cancelled = (index + step) % 3 == 0
                appointment = Appointment(
                    provider_id=row.user_id,
                    provider_key=row.key,
                    patient_id=patient.id,
                    patient_key=patient_key,
                    clinic_id=row.clinic_id,
                    starts_at=starts_at,
                    ends_at=starts_at + timedelta(minutes=2),
                    status=(
                        AppointmentStatus.CANCELLED.value
                        if cancelled
                        else AppointmentStatus.BOOKED.value
                    ),
                    cancel_reason=ODD_TEXT if cancelled else None,
                )
                session.add(appointment)
                await session.flush()
                ids.append(appointment.id)
        # A created_at without microseconds, as some rows have.
        await session.execute(
            text(
                "UPDATE appointments SET created_at = date_trunc('second', created_at) "
                "WHERE id = :id"
            ),
            {"id": ids[0]},
        )
    return ids, patient.headers["Authorization"]


async def test_listed_appointments_are_byte_for_byte_the_pydantic_serialisation(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    ids, bearer = await _seed(booking, accounts)
    headers = {"Authorization": bearer}
    single: dict[str, bytes] = {}
    for appointment_id in ids:
        response = await client.get(f"/v1/appointments/{appointment_id}", headers=headers)
        assert response.status_code == 200, response.text
        single[str(appointment_id)] = response.content

    for order in ("asc", "desc"):
        expected = sorted(
            (orjson.loads(body) for body in single.values()),
            key=lambda item: (datetime.fromisoformat(item["start"]), item["id"]),
            reverse=order == "desc",
        )
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(len(ids)):
            params = {"limit": "5", "order": order, **({"cursor": cursor} if cursor else {})}
            response = await client.get("/v1/appointments", params=params, headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            page = orjson.loads(response.content)
            items = [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            # Byte for byte: the single endpoint's bodies, and the model of the page.
            joined = b",".join(single[item] for item in items)
            assert response.content == (
                b'{"items":[' + joined + b'],"next_cursor":' + orjson.dumps(cursor) + b"}"
            )
            model = Page[AppointmentOut](
                items=[AppointmentOut.model_validate_json(single[item]) for item in items],
                next_cursor=cursor,
            )
            assert response.content == model.model_dump_json().encode()
            seen += items
            if cursor is None:
                break
            last = expected[len(seen) - 1]
            at = datetime.fromisoformat(last["start"]).astimezone(UTC)
            assert cursor == encode_cursor((at, uuid.UUID(last["id"])))
        assert seen == [item["id"] for item in expected]


async def test_a_changed_appointment_is_byte_for_byte_the_pydantic_serialisation(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    ids, bearer = await _seed(booking, accounts)
    headers = {"Authorization": bearer}
    reason = ODD_TEXT.replace("\x01", "").replace("\t", "").replace("\u2028", "")
    changed = 0
    for appointment_id in ids:
        url = f"/v1/appointments/{appointment_id}"
        if (await client.get(url, headers=headers)).json()["status"] != "booked":
            continue
        response = await client.post(f"{url}/cancel", json={"reason": reason}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        # The single endpoint still goes through AppointmentOut and FastAPI.
        single = await client.get(url, headers=headers)
        assert response.content == single.content
        model = AppointmentOut.model_validate_json(response.content)
        assert response.content == model.model_dump_json().encode()
        assert model.cancel_reason == reason
        changed += 1
    # Every appointment the seed left booked, in every zone and at every instant.
    booked = [(i + s) % 3 != 0 for i in range(len(ZONES)) for s in range(len(INSTANTS))]
    assert changed == sum(booked)


async def test_a_booking_is_byte_for_byte_the_pydantic_serialisation(
    client: httpx.AsyncClient, booking: Booking, accounts: Accounts
) -> None:
    for zone in ZONES:
        patient = await accounts.create(Role.PATIENT, full_name=ODD_TEXT)
        provider = await booking.provider(timezone=zone, full_name=f"Dr. {zone} {ODD_TEXT}")
        day = next_local_day(zone) + timedelta(days=1)
        slot = (await booking.free_slots(provider, day, day))[0]
        key = f"bytes-{zone}"
        booked = await booking.book(
            patient, provider, datetime.fromisoformat(slot["start"]), key=key
        )
        assert booked.status_code == 201, booked.text
        single = await client.get(
            f"/v1/appointments/{booked.json()['id']}", headers=patient.headers
        )
        assert booked.content == single.content, zone
        model = AppointmentOut.model_validate_json(booked.content)
        assert booked.content == model.model_dump_json().encode()
        replayed = await booking.book(
            patient, provider, datetime.fromisoformat(slot["start"]), key=key
        )
        assert replayed.headers["idempotent-replayed"] == "true"
        # The same document (stored as jsonb, whose key order is PostgreSQL's own).
        assert orjson.loads(replayed.content) == orjson.loads(booked.content)


async def test_listed_records_are_byte_for_byte_the_pydantic_serialisation(
    http: httpx.AsyncClient, team: CareTeam, database: Database
) -> None:
    await add_records(database, team.patient, team.provider.account, 7)
    async with database.unit_of_work() as session:
        # Unusual titles, and one upload time without microseconds.
        await session.execute(
            text("UPDATE medical_records SET title = title || :odd WHERE patient_id = :p"),
            {"odd": ODD_TEXT.replace("\x01", "").replace("\t", ""), "p": team.patient.id},
        )
        await session.execute(
            text(
                "UPDATE medical_records SET uploaded_at = date_trunc('second', uploaded_at) "
                "WHERE id = (SELECT id FROM medical_records WHERE patient_id = :p "
                "ORDER BY uploaded_at LIMIT 1)"
            ),
            {"p": team.patient.id},
        )
    for reader in (team.patient, team.admin):
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            response = await http.get(team.records_path(), params=params, headers=reader.headers)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            page = orjson.loads(response.content)
            cursor = page["next_cursor"]
            details = []
            for item in page["items"]:
                detail = await http.get(
                    f"{team.records_path()}/{item['id']}", headers=reader.headers
                )
                assert detail.status_code == 200, detail.text
                details.append(detail.content)
            # The detail still goes through RecordWithUrl and FastAPI; the same URL comes from
            # the URL cache.
            assert response.content == (
                b'{"items":['
                + b",".join(details)
                + b'],"next_cursor":'
                + orjson.dumps(cursor)
                + b"}"
            )
            model = Page[RecordWithUrl](
                items=[RecordWithUrl.model_validate_json(body) for body in details],
                next_cursor=cursor,
            )
            assert response.content == model.model_dump_json().encode()
            pages += 1
            if cursor is None:
                break
        assert pages == 3
