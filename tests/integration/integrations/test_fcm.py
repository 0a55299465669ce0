"""FCM HTTP v1 adapter against the fake FCM over real HTTP: sends, dead tokens, retries."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from app.integrations.fakes import FakeFcm
from app.integrations.fcm import Fcm, SendResult, dead_token_reason
from app.kit.resilience import PermanentFailure, ServiceDisabled, TransientFailure
from tests.integration.integrations import FCM_TOKEN, PROJECT, fast_settings

SEND_PATH = f"/v1/projects/{PROJECT}/messages:send"


@pytest.fixture
async def fake() -> AsyncIterator[FakeFcm]:
    async with FakeFcm(access_token=FCM_TOKEN) as server:
        yield server


@pytest.fixture
async def fcm(fake: FakeFcm) -> AsyncIterator[Fcm]:
    async with Fcm(fast_settings(fcm_base_url=fake.url)) as adapter:
        yield adapter


async def test_send_posts_an_http_v1_message(fake: FakeFcm, fcm: Fcm) -> None:
    result = await fcm.send(
        "device-1", "Appointment booked", "Tue 10:00", {"appointment_id": "a1", "dedupe_key": "k1"}
    )
    assert result.sent
    assert not result.remove_token
    assert result.message_id == fake.deliveries[0].message_id

    (call,) = fake.calls
    assert (call.method, call.path) == ("POST", SEND_PATH)
    assert call.headers["authorization"] == f"Bearer {FCM_TOKEN}"
    assert call.body == {
        "message": {
            "token": "device-1",
            "notification": {"title": "Appointment booked", "body": "Tue 10:00"},
            "data": {"appointment_id": "a1", "dedupe_key": "k1"},
        }
    }
    assert fake.pushes("device-1", "k1") == 1
    assert fake.pushes("device-1", "other") == 0


async def test_unregistered_token_is_to_be_removed_without_retry(fake: FakeFcm, fcm: Fcm) -> None:
    fake.unregister("stale-device")
    result = await fcm.send("stale-device", "Reminder", "Tomorrow 09:00")
    assert result == SendResult("remove_token", reason="UNREGISTERED")
    assert len(fake.calls) == 1
    assert fake.pushes("stale-device") == 0
    assert fcm.status().breaker == "closed"
    assert fcm.http.breaker.fail_counter == 0


async def test_an_invalid_token_is_to_be_removed(fake: FakeFcm, fcm: Fcm) -> None:
    fake.invalidate("garbage")
    result = await fcm.send("garbage", "Reminder", "Tomorrow 09:00")
    assert result.remove_token
    assert result.reason == "INVALID_ARGUMENT"
    assert len(fake.calls) == 1


async def test_a_bad_payload_is_a_permanent_failure_not_a_dead_token(
    fake: FakeFcm, fcm: Fcm
) -> None:
    body = {
        "error": {
            "code": 400,
            "message": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "message.data[0].value", "description": "x"}],
                }
            ],
        }
    }
    fake.reject_next(400, body=body)
    with pytest.raises(PermanentFailure) as caught:
        await fcm.send("device-1", "t", "b")
    assert caught.value.status_code == 400
    assert len(fake.calls) == 1


async def test_5xx_then_success_delivers_once(fake: FakeFcm, fcm: Fcm) -> None:
    fake.fail_next(2, status=503)
    result = await fcm.send("device-1", "Booked", "See you", {"dedupe_key": "booking-1"})
    assert result.sent
    assert [call.outcome for call in fake.calls] == ["503", "503", "200"]
    assert fake.pushes("device-1", "booking-1") == 1


async def test_429_is_retried(fake: FakeFcm, fcm: Fcm) -> None:
    fake.rate_limit_next(1, retry_after=0.1)
    result = await fcm.send("device-1", "Booked", "See you", {"dedupe_key": "booking-2"})
    assert result.sent
    first, second = fake.calls
    assert first.outcome == "429"
    assert second.at - first.at >= 0.04  # at least the 0.05 s cap of the test settings
    assert fake.pushes("device-1", "booking-2") == 1


async def test_fcm_down_is_service_unavailable(fake: FakeFcm, fcm: Fcm) -> None:
    fake.fail_next(times=None, status=500)
    with pytest.raises(TransientFailure):
        await fcm.send("device-1", "Booked", "See you")
    assert len(fake.calls) == 3
    assert fake.pushes("device-1") == 0


async def test_a_wrong_access_token_is_permanent_and_keeps_the_device(fake: FakeFcm) -> None:
    settings = fast_settings(fcm_base_url=fake.url, fcm_access_token="expired")
    async with Fcm(settings) as fcm:
        with pytest.raises(PermanentFailure) as caught:
            await fcm.send("device-1", "t", "b")
    assert caught.value.status_code == 401
    assert len(fake.calls) == 1


async def test_without_base_url_or_project_the_adapter_is_disabled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="app"):
        no_url = Fcm(fast_settings(fcm_base_url=None))
        no_project = Fcm(fast_settings(fcm_base_url="http://127.0.0.1:9", fcm_project_id=None))
    assert not no_url.enabled
    assert not no_project.enabled
    assert no_url.status().breaker is None
    assert [r.getMessage() for r in caplog.records] == [
        "fcm integration disabled: CAREBOOK_FCM_BASE_URL is not set",
        "fcm integration disabled: CAREBOOK_FCM_PROJECT_ID is not set",
    ]
    with pytest.raises(ServiceDisabled):
        await no_url.send("device-1", "t", "b")
    await no_url.aclose()
    await no_project.aclose()


def _error(status: int, grpc: str, message: str, *details: dict[str, object]) -> dict[str, object]:
    return {"error": {"code": status, "message": message, "status": grpc, "details": list(details)}}


FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (
            404,
            _error(404, "NOT_FOUND", "gone", {"@type": FCM_ERROR, "errorCode": "UNREGISTERED"}),
            "UNREGISTERED",
        ),
        (404, _error(404, "NOT_FOUND", "Requested entity was not found."), "NOT_FOUND"),
        (404, "not json", "NOT_FOUND"),
        (
            400,
            _error(400, "INVALID_ARGUMENT", "x", {"@type": FCM_ERROR, "errorCode": "UNREGISTERED"}),
            "UNREGISTERED",
        ),
        (
            400,
            _error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                {"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"},
            ),
            "INVALID_ARGUMENT",
        ),
        (
            400,
            _error(
                400,
                "INVALID_ARGUMENT",
                "bad",
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "message.token", "description": "bad"}],
                },
            ),
            "INVALID_ARGUMENT",
        ),
        (
            403,
            _error(
                403,
                "PERMISSION_DENIED",
                "x",
                {"@type": FCM_ERROR, "errorCode": "SENDER_ID_MISMATCH"},
            ),
            "SENDER_ID_MISMATCH",
        ),
        (403, _error(403, "PERMISSION_DENIED", "caller lacks permission"), None),
        (400, _error(400, "INVALID_ARGUMENT", "Message too big"), None),
        (401, _error(401, "UNAUTHENTICATED", "Request had invalid credentials."), None),
        (400, "not json", None),
    ],
)
def test_dead_token_reasons(status: int, body: object, reason: str | None) -> None:
    assert dead_token_reason(status, body) == reason
