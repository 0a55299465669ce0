"""The shared resilience machinery against a fake server over real HTTP on 127.0.0.1 (audit F8).

Timeouts, retries (5xx, 429 with Retry-After, dropped connections; never other 4xx), the circuit
breaker used as `with breaker.calling(): await ...`, and the per-service bulkhead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app.integrations.fakes import FakeFcm, FakeVideoSdk
from app.integrations.fcm import Fcm
from app.integrations.videosdk import VideoSdk
from app.kit.resilience import (
    BulkheadFull,
    CircuitOpen,
    PermanentFailure,
    ResiliencePolicy,
    ResilientClient,
    ServiceDisabled,
    TransientFailure,
    parse_retry_after,
)
from tests.integration.integrations import fast_settings

ROOM = {"customRoomId": "appointment-1"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeVideoSdk]:
    async with FakeVideoSdk() as server:
        yield server


def client_for(fake: FakeVideoSdk, service: str, **overrides: Any) -> ResilientClient:
    policy = ResiliencePolicy.from_settings(fast_settings(**overrides))
    return ResilientClient(service, fake.url, policy)


async def create(client: ResilientClient) -> httpx.Response:
    return await client.request("POST", "/v2/rooms", json=ROOM)


def gauge(service: str) -> float | None:
    return REGISTRY.get_sample_value("carebook_circuit_breaker_state", {"service": service})


async def test_a_hung_call_fails_within_the_read_timeout(fake: FakeVideoSdk) -> None:
    fake.hang_next(times=None)
    async with client_for(fake, "hang", http_retry_attempts=2) as client:
        started = time.monotonic()
        # The fake never answers: only the read timeout can end the call. The deadline is a
        # guard against hanging forever, far above the two 0.2 s attempts.
        async with asyncio.timeout(30):
            with pytest.raises(TransientFailure) as caught:
                await create(client)
        elapsed = time.monotonic() - started
    assert elapsed >= 0.35  # two attempts, each waited for its whole read timeout
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert [call.outcome for call in fake.calls] == ["hang", "hang"]


async def test_a_hung_service_fills_only_its_own_bulkhead(fake: FakeVideoSdk) -> None:
    settings = fast_settings(
        http_read_timeout_seconds=120.0, bulkhead_limit=1, bulkhead_wait_seconds=0.05
    )
    async with FakeFcm(access_token="fcm-access-token") as fcm_fake:
        settings = settings.model_copy(
            update={"videosdk_base_url": fake.url, "fcm_base_url": fcm_fake.url}
        )
        async with VideoSdk(settings) as video, Fcm(settings) as fcm:
            fake.hang_next(times=None)
            hung = asyncio.create_task(video.create_room("appointment-hung"))
            async with asyncio.timeout(30):
                await fake.wait_for_calls(1)

            # The one VideoSDK slot is taken: the next VideoSDK call is refused (after the
            # bulkhead wait, not the 120 s read timeout) ...
            async with asyncio.timeout(30):
                with pytest.raises(BulkheadFull):
                    await video.create_room("appointment-other")
            assert len(fake.calls) == 1  # ... without reaching VideoSDK

            # ... and FCM, with its own bulkhead, is served while VideoSDK still hangs.
            async with asyncio.timeout(30):
                result = await fcm.send("device-1", "Booked", "See you soon")
            assert result.sent
            assert not hung.done()

            hung.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hung
            fake.clear_faults()
            # The cancelled call gave its slot back.
            assert await video.create_room("appointment-after")


async def test_5xx_then_success_is_retried(fake: FakeVideoSdk) -> None:
    fake.fail_next(2, status=503)
    async with client_for(fake, "retry-5xx") as client:
        response = await create(client)
    assert response.status_code == 200
    assert [call.outcome for call in fake.calls] == ["503", "503", "200"]
    assert fake.rooms_for("appointment-1") == 1


async def test_retries_are_exhausted_into_service_unavailable(fake: FakeVideoSdk) -> None:
    fake.fail_next(times=None, status=500)
    async with client_for(fake, "retry-exhausted", http_retry_attempts=3) as client:
        with pytest.raises(TransientFailure, match="HTTP 500 after 3 attempts"):
            await create(client)
    assert len(fake.calls) == 3
    assert fake.rooms_for("appointment-1") == 0


async def test_429_is_retried_after_the_retry_after_delay(fake: FakeVideoSdk) -> None:
    fake.rate_limit_next(1, retry_after=1)
    async with client_for(fake, "retry-429", http_retry_max_seconds=5.0) as client:
        response = await create(client)
    assert response.status_code == 200
    first, second = fake.calls
    assert first.outcome == "429"
    assert second.outcome == "200"
    assert second.at - first.at >= 0.9  # the server asked for 1 s (backoff alone is ~0.01 s)


async def test_retry_after_is_capped(fake: FakeVideoSdk) -> None:
    fake.rate_limit_next(1, retry_after=600)
    async with client_for(fake, "retry-429-cap", http_retry_max_seconds=0.3) as client:
        # Waiting the 600 s asked for would run into this guard; the cap is 0.3 s.
        async with asyncio.timeout(60):
            await create(client)
    first, second = fake.calls
    assert second.at - first.at >= 0.25


async def test_429_retry_after_is_reported_when_retries_run_out(fake: FakeVideoSdk) -> None:
    fake.rate_limit_next(times=None, retry_after=7)
    async with client_for(fake, "retry-429-out", http_retry_attempts=1) as client:
        with pytest.raises(TransientFailure) as caught:
            await create(client)
    assert caught.value.retry_after == 7


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_other_4xx_are_permanent_and_never_retried(fake: FakeVideoSdk, status: int) -> None:
    fake.reject_next(status, body={"error": "no"})
    async with client_for(fake, f"permanent-{status}") as client:
        with pytest.raises(PermanentFailure) as caught:
            await create(client)
        assert caught.value.status_code == status
        assert caught.value.body == {"error": "no"}
        assert len(fake.calls) == 1
        # The service answered: that is no sign of ill health for the breaker.
        assert client.breaker.fail_counter == 0
        assert client.breaker_state == "closed"


async def test_a_dropped_connection_is_retried(fake: FakeVideoSdk) -> None:
    fake.drop_next(1)
    async with client_for(fake, "drop") as client:
        response = await create(client)
    assert response.status_code == 200
    assert [call.outcome for call in fake.calls] == ["drop", "200"]


async def test_connection_refused_is_retried_then_unavailable() -> None:
    async with FakeVideoSdk() as gone:
        url = gone.url
    policy = ResiliencePolicy.from_settings(fast_settings(http_retry_attempts=2))
    async with ResilientClient("refused", url, policy) as client:
        with pytest.raises(TransientFailure, match="ConnectError after 2 attempts"):
            await create(client)


async def test_breaker_opens_after_fail_max_failures_and_closes_after_reset(
    fake: FakeVideoSdk,
) -> None:
    fake.fail_next(times=None, status=503)
    service = "breaker-cycle"
    async with client_for(
        fake, service, http_retry_attempts=1, breaker_fail_max=3, breaker_reset_seconds=1.0
    ) as client:
        assert client.status().breaker == "closed"
        assert gauge(service) == 0.0
        for _ in range(2):
            with pytest.raises(TransientFailure) as caught:
                await create(client)
            assert not isinstance(caught.value, CircuitOpen)
        assert client.breaker.fail_counter == 2
        with pytest.raises(CircuitOpen):  # the third failure trips it
            await create(client)
        assert client.breaker_state == "open"
        assert client.status().breaker == "open"
        assert gauge(service) == 2.0
        assert len(fake.calls) == 3

        # Open: calls fail at once and never reach the service (the reset timeout is long
        # enough that a busy machine does not reach half-open meanwhile).
        for _ in range(5):
            with pytest.raises(CircuitOpen):
                await create(client)
        assert len(fake.calls) == 3

        # The service recovers; after the reset timeout one trial call closes the breaker.
        fake.clear_faults()
        await asyncio.sleep(1.05)
        response = await create(client)
        assert response.status_code == 200
        assert client.status().breaker == "closed"
        assert gauge(service) == 0.0
        assert len(fake.calls) == 4


async def test_a_failed_trial_call_opens_the_breaker_again(fake: FakeVideoSdk) -> None:
    fake.fail_next(times=None, status=502)
    async with client_for(
        fake, "breaker-trial", http_retry_attempts=1, breaker_fail_max=1, breaker_reset_seconds=0.2
    ) as client:
        with pytest.raises(CircuitOpen):
            await create(client)
        await asyncio.sleep(0.25)
        with pytest.raises(CircuitOpen, match="Trial call failed"):
            await create(client)  # half-open: one call goes through, fails, reopens
        assert len(fake.calls) == 2
        assert client.breaker_state == "open"


async def test_an_opening_breaker_stops_the_retries(fake: FakeVideoSdk) -> None:
    fake.hang_next(times=None)
    async with client_for(
        fake, "breaker-stops-retries", http_retry_attempts=5, breaker_fail_max=2
    ) as client:
        async with asyncio.timeout(30):
            with pytest.raises(CircuitOpen):
                await create(client)
    assert len(fake.calls) == 2  # not 5: once open, no more attempts


async def test_cancelling_a_call_propagates_and_frees_its_slot(fake: FakeVideoSdk) -> None:
    fake.hang_next(1)
    async with client_for(
        fake, "cancel", http_read_timeout_seconds=5.0, bulkhead_limit=1, breaker_fail_max=1
    ) as client:
        task = asyncio.create_task(create(client))
        async with asyncio.timeout(30):
            await fake.wait_for_calls(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Counted as a failure (fail_max=1 opened the breaker), yet the cancellation was not
        # turned into CircuitOpen; the bulkhead slot is free again.
        assert client.breaker_state == "open"
        client.breaker.close()
        assert (await create(client)).status_code == 200


async def test_a_client_without_base_url_is_disabled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.kit.resilience"):
        client = ResilientClient("nowhere", None, ResiliencePolicy())
    assert not client.enabled
    assert client.status().enabled is False
    assert client.status().breaker is None
    assert [r.getMessage() for r in caplog.records] == [
        "nowhere integration disabled: no base URL configured"
    ]
    with pytest.raises(ServiceDisabled):
        await client.request("GET", "/")
    await client.aclose()


def test_retry_after_parsing() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now)
    assert parse_retry_after(
        format_datetime(now + timedelta(seconds=30), usegmt=True), now=now
    ) == pytest.approx(30.0)
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None


def test_policy_follows_settings() -> None:
    settings = fast_settings(http_connect_timeout_seconds=1.5, bulkhead_limit=7)
    policy = ResiliencePolicy.from_settings(settings)
    assert policy.timeout == httpx.Timeout(connect=1.5, read=0.2, write=0.2, pool=0.2)
    assert policy.bulkhead_limit == 7
    assert policy.breaker_fail_max == settings.breaker_fail_max
