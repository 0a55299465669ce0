"""VideoSDK adapter against the fake VideoSDK over real HTTP: one room per appointment, always."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from app.integrations.fakes import FakeVideoSdk
from app.integrations.videosdk import VideoSdk
from app.kit.resilience import PermanentFailure, ServiceDisabled, TransientFailure
from tests.integration.integrations import VIDEO_TOKEN, fast_settings


@pytest.fixture
async def fake() -> AsyncIterator[FakeVideoSdk]:
    async with FakeVideoSdk(token=VIDEO_TOKEN) as server:
        yield server


@pytest.fixture
async def video(fake: FakeVideoSdk) -> AsyncIterator[VideoSdk]:
    async with VideoSdk(fast_settings(videosdk_base_url=fake.url)) as adapter:
        yield adapter


async def test_create_room_sends_the_appointment_as_custom_room_id(
    fake: FakeVideoSdk, video: VideoSdk
) -> None:
    appointment_id = uuid.uuid4()
    room_id = await video.create_room(appointment_id)

    (call,) = fake.calls
    assert (call.method, call.path) == ("POST", "/v2/rooms")
    assert call.body == {"customRoomId": str(appointment_id)}
    assert call.headers["authorization"] == VIDEO_TOKEN
    room = fake.room_by_custom_id(str(appointment_id))
    assert room is not None
    assert room.room_id == room_id


async def test_creating_twice_returns_the_same_room(fake: FakeVideoSdk, video: VideoSdk) -> None:
    appointment_id = uuid.uuid4()
    first = await video.create_room(appointment_id)
    second = await video.create_room(str(appointment_id))
    assert first == second
    assert fake.rooms_for(str(appointment_id)) == 1
    assert len(fake.calls) == 2


async def test_5xx_then_success_makes_exactly_one_room(fake: FakeVideoSdk, video: VideoSdk) -> None:
    appointment_id = str(uuid.uuid4())
    fake.fail_next(2, status=503)
    room_id = await video.create_room(appointment_id)
    assert [call.outcome for call in fake.calls] == ["503", "503", "200"]
    assert fake.rooms_for(appointment_id) == 1
    assert fake.rooms[room_id].custom_room_id == appointment_id


async def test_an_answer_lost_after_the_room_was_made_still_makes_one_room(
    fake: FakeVideoSdk, video: VideoSdk
) -> None:
    appointment_id = str(uuid.uuid4())
    fake.drop_next(1, after_effect=True)  # VideoSDK creates the room, the answer never arrives
    room_id = await video.create_room(appointment_id)
    assert [call.outcome for call in fake.calls] == ["drop", "200"]
    assert fake.rooms_for(appointment_id) == 1
    assert fake.room_by_custom_id(appointment_id) == fake.rooms[room_id]


async def test_a_timed_out_create_is_retried_into_the_same_room(
    fake: FakeVideoSdk, video: VideoSdk
) -> None:
    appointment_id = str(uuid.uuid4())
    fake.hang_next(1, after_effect=True)  # made, then the answer hangs past the read timeout
    room_id = await video.create_room(appointment_id)
    assert [call.outcome for call in fake.calls] == ["hang", "200"]
    assert fake.rooms_for(appointment_id) == 1
    assert fake.room_by_custom_id(appointment_id) == fake.rooms[room_id]


async def test_a_400_is_not_retried(fake: FakeVideoSdk, video: VideoSdk) -> None:
    fake.reject_next(400, body={"statusCode": 400, "error": "bad request"})
    with pytest.raises(PermanentFailure) as caught:
        await video.create_room(uuid.uuid4())
    assert caught.value.status_code == 400
    assert len(fake.calls) == 1


async def test_a_wrong_token_is_a_permanent_failure(fake: FakeVideoSdk) -> None:
    settings = fast_settings(videosdk_base_url=fake.url, videosdk_token="not-the-token")
    async with VideoSdk(settings) as video:
        with pytest.raises(PermanentFailure) as caught:
            await video.create_room(uuid.uuid4())
    assert caught.value.status_code == 401
    assert len(fake.calls) == 1


async def test_down_for_good_is_service_unavailable(fake: FakeVideoSdk, video: VideoSdk) -> None:
    fake.fail_next(times=None, status=500)
    with pytest.raises(TransientFailure):
        await video.create_room(uuid.uuid4())
    assert len(fake.calls) == 3  # http_retry_attempts


async def test_delete_room_deactivates_it(fake: FakeVideoSdk, video: VideoSdk) -> None:
    room_id = await video.create_room(uuid.uuid4())
    assert await video.delete_room(room_id) is True
    call = fake.calls[-1]
    assert (call.method, call.path, call.body) == (
        "POST",
        "/v2/rooms/deactivate",
        {"roomId": room_id},
    )
    assert fake.rooms[room_id].disabled
    # Deleting again (a compensation job that runs twice) is harmless.
    assert await video.delete_room(room_id) is True
    assert fake.rooms[room_id].deactivations == 2


async def test_deleting_an_unknown_room_counts_as_already_deleted(
    fake: FakeVideoSdk, video: VideoSdk
) -> None:
    assert await video.delete_room("zzzz-zzzz-zzzz") is False
    (call,) = fake.calls  # a 404 is an answer, not retried
    assert call.outcome == "404"
    assert video.status().breaker == "closed"


async def test_delete_room_is_retried_through_5xx(fake: FakeVideoSdk, video: VideoSdk) -> None:
    room_id = await video.create_room(uuid.uuid4())
    fake.fail_next(1, status=502)
    assert await video.delete_room(room_id) is True
    assert fake.rooms[room_id].deactivations == 1


async def test_join_url_follows_the_template(fake: FakeVideoSdk) -> None:
    settings = fast_settings(
        videosdk_base_url=fake.url, videosdk_join_url_template=fake.url + "/meeting/{room_id}"
    )
    async with VideoSdk(settings) as video:
        room_id = await video.create_room(uuid.uuid4())
        url = video.join_url(room_id)
        assert url == f"{fake.url}/meeting/{room_id}"
        async with httpx.AsyncClient() as client:
            page = await client.get(url)
        assert page.status_code == 200
        assert room_id in page.text
        assert video.join_url("a b/c") == f"{fake.url}/meeting/a%20b%2Fc"


async def test_without_base_url_the_adapter_is_disabled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app"):
        video = VideoSdk(fast_settings(videosdk_base_url=None))
    assert not video.enabled
    assert video.status().enabled is False
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["videosdk integration disabled: CAREBOOK_VIDEOSDK_BASE_URL is not set"]
    with pytest.raises(ServiceDisabled):
        await video.create_room(uuid.uuid4())
    await video.aclose()


def test_the_fake_runs_on_its_own_thread_and_takes_faults_over_http() -> None:
    """How the demo runs it: a thread of its own, steered with plain HTTP."""
    fake = FakeVideoSdk()
    url = fake.start_in_thread()
    try:
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=2.0) as client:
            assert client.post("/_fake/fault", json={"kind": "fail", "times": 1}).is_success
            assert client.post("/v2/rooms", json={"customRoomId": "a"}).status_code == 503
            assert client.post("/v2/rooms", json={"customRoomId": "a"}).status_code == 200
            assert client.post("/_fake/slow", json={"ms": 50}).is_success
            assert client.post("/_fake/reset").is_success
            state = client.get("/_fake/state").json()
            assert [room["customRoomId"] for room in state["rooms"]] == ["a"]
            calls = client.get("/_fake/calls").json()
            assert [call["outcome"] for call in calls] == ["503", "200"]
            bad = client.post("/_fake/fault", json={"kind": "explode"})
            assert bad.status_code == 422
        fake.hang_next(1)  # direct calls from another thread work too
        fake.release()
        assert fake.rooms_for("a") == 1
    finally:
        fake.stop_thread()
