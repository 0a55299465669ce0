"""Unit tests for app.kit.jobs: when a job that calls a third party tries again."""

from __future__ import annotations

from typing import Any

import pytest

from app.kit.jobs import is_last_try, retry_later
from app.kit.resilience import CircuitOpen, TransientFailure
from app.settings import Settings


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "environment": "test",
        "jwt_secret": "x" * 40,
        "job_retry_base_seconds": 10.0,
        "job_retry_max_seconds": 600.0,
        "breaker_reset_seconds": 30.0,
        "job_max_tries": 8,
    }
    return Settings.model_validate({**base, **values})


def delay_ms(ctx: dict[str, Any], config: Settings, error: TransientFailure) -> int:
    score = retry_later(ctx, config, error).defer_score
    assert score is not None
    return score


@pytest.mark.parametrize(("job_try", "backoff"), [(1, 10), (2, 20), (4, 80), (7, 600), (20, 600)])
def test_backoff_is_exponential_capped_and_jittered_to_half_or_more(
    job_try: int, backoff: float
) -> None:
    config = settings()
    error = TransientFailure("videosdk", "HTTP 503 after 4 attempts")
    delays = {delay_ms({"job_try": job_try}, config, error) for _ in range(50)}
    assert all(backoff * 500 <= delay <= backoff * 1000 for delay in delays)
    assert len(delays) > 1  # jittered: a herd of jobs does not come back at once


def test_an_open_breaker_is_waited_out() -> None:
    config = settings(breaker_reset_seconds=45.0)
    delay = delay_ms({"job_try": 1}, config, CircuitOpen("fcm", "open"))
    assert delay >= 45_000


def test_a_retry_after_is_honoured_up_to_the_cap() -> None:
    config = settings(job_retry_max_seconds=120.0)
    asked = TransientFailure("fcm", "HTTP 429", retry_after=90.0)
    greedy = TransientFailure("fcm", "HTTP 429", retry_after=86_400.0)
    assert delay_ms({"job_try": 1}, config, asked) >= 90_000
    assert delay_ms({"job_try": 1}, config, greedy) <= 120_000


def test_the_last_try_is_known() -> None:
    config = settings(job_max_tries=3)
    assert not is_last_try({"job_try": 2}, config)
    assert is_last_try({"job_try": 3}, config)
    assert not is_last_try({}, config)  # a job called directly counts as its first try


def test_reminder_leads_are_validated_and_ordered_longest_first() -> None:
    assert settings(reminder_lead_minutes=[60, 1440, 60]).reminder_lead_minutes == [1440, 60]
    with pytest.raises(ValueError, match="reminder leads"):
        settings(reminder_lead_minutes=[0])
    with pytest.raises(ValueError, match="reminder leads"):
        settings(reminder_lead_minutes=[8 * 24 * 60])
