"""Unit tests for app.settings: refusing public secrets, bounds and environment variables."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pydantic import ValidationError

from app.settings import DEVELOPMENT_JWT_SECRET, Settings

GOOD_SECRET = "a-production-grade-secret-" + "z" * 20  # 46 characters


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read CAREBOOK_* variables; keep the runner's environment out of these tests."""
    for name in [key for key in os.environ if key.upper().startswith("CAREBOOK_")]:
        monkeypatch.delenv(name, raising=False)


def build(**values: Any) -> Settings:
    return Settings.model_validate(values)


@pytest.mark.parametrize("environment", ["production", "test"])
def test_default_secret_is_refused_outside_development(environment: str) -> None:
    with pytest.raises(ValidationError, match="CAREBOOK_JWT_SECRET"):
        build(environment=environment)
    with pytest.raises(ValidationError, match="CAREBOOK_JWT_SECRET"):
        build(environment=environment, jwt_secret=DEVELOPMENT_JWT_SECRET)


def test_default_secret_is_accepted_in_development() -> None:
    settings = build()
    assert settings.environment == "development"
    assert settings.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET
    explicit = build(environment="development", jwt_secret=DEVELOPMENT_JWT_SECRET)
    assert explicit.jwt_secret.get_secret_value() == DEVELOPMENT_JWT_SECRET


@pytest.mark.parametrize("environment", ["production", "test"])
def test_short_secret_is_refused_outside_development(environment: str) -> None:
    with pytest.raises(ValidationError, match="32"):
        build(environment=environment, jwt_secret="s" * 31)
    with pytest.raises(ValidationError):
        build(environment=environment, jwt_secret="")


@pytest.mark.parametrize("environment", ["production", "test"])
def test_strong_secret_is_accepted(environment: str) -> None:
    assert build(environment=environment, jwt_secret="s" * 32).environment == environment
    settings = build(environment=environment, jwt_secret=GOOD_SECRET)
    assert settings.jwt_secret.get_secret_value() == GOOD_SECRET


def test_secret_is_not_shown_in_repr() -> None:
    settings = build(environment="production", jwt_secret=GOOD_SECRET)
    assert GOOD_SECRET not in repr(settings)
    assert GOOD_SECRET not in str(settings.model_dump())


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(ValidationError):
        build(environment="staging", jwt_secret=GOOD_SECRET)


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREBOOK_ENVIRONMENT", "production")
    monkeypatch.setenv("CAREBOOK_JWT_SECRET", GOOD_SECRET)
    monkeypatch.setenv("CAREBOOK_MAX_BODY_BYTES", "2048")
    settings = Settings()
    assert settings.environment == "production"
    assert settings.jwt_secret.get_secret_value() == GOOD_SECRET
    assert settings.max_body_bytes == 2048


def test_production_from_the_environment_without_a_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAREBOOK_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="CAREBOOK_JWT_SECRET"):
        Settings()


def test_security_defaults() -> None:
    settings = build()
    assert settings.access_token_minutes == 15
    assert settings.argon2_memory_kib == 19456
    assert settings.argon2_time_cost == 2
    assert settings.argon2_parallelism == 1
    assert settings.max_body_bytes == 1_048_576
    assert settings.embedded is True
    assert build(database_url="postgresql://db/x").embedded is False


@pytest.mark.parametrize(
    "overrides",
    [
        {"argon2_memory_kib": 19455},
        {"argon2_time_cost": 1},
        {"argon2_parallelism": 0},
        {"access_token_minutes": 0},
        {"access_token_minutes": 61},
        {"max_body_bytes": 1023},
        {"db_pool_size": 0},
    ],
)
def test_weakening_bounds_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        build(**overrides)
