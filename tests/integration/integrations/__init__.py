"""Integration tests of the third-party adapters against the fake servers, over real HTTP."""

from __future__ import annotations

from typing import Any

from app.settings import Settings

VIDEO_TOKEN = "video-token"
FCM_TOKEN = "fcm-access-token"
PROJECT = "carebook-test"


def fast_settings(**overrides: Any) -> Settings:
    """Settings with small timeouts and backoffs, so every failure path is quick and bounded."""
    values: dict[str, Any] = {
        "environment": "test",
        "jwt_secret": "test-secret-" + "x" * 40,
        "log_json": False,
        "videosdk_token": VIDEO_TOKEN,
        "fcm_project_id": PROJECT,
        "fcm_access_token": FCM_TOKEN,
        "http_connect_timeout_seconds": 0.2,
        "http_read_timeout_seconds": 0.2,
        "http_write_timeout_seconds": 0.2,
        "http_pool_timeout_seconds": 0.2,
        "http_retry_attempts": 3,
        "http_retry_base_seconds": 0.01,
        "http_retry_max_seconds": 0.05,
        "breaker_fail_max": 5,
        "breaker_reset_seconds": 0.3,
        "bulkhead_limit": 4,
        "bulkhead_wait_seconds": 0.05,
    }
    values.update(overrides)
    return Settings.model_validate(values)
