"""Unit tests for app.kit.security: access tokens, refresh-token secrets and password hashing."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import orjson
import pytest

from app.kit.security import (
    JWT_ALGORITHM,
    InvalidToken,
    Passwords,
    Tokens,
    hash_refresh_secret,
    new_refresh_secret,
)
from app.settings import Settings

SECRET = "unit-test-secret-" + "s" * 40


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "jwt_secret": SECRET,
        "database_url": None,
        "redis_url": None,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    return Tokens(make_settings())


@pytest.fixture(scope="module")
def passwords() -> Passwords:
    return Passwords(make_settings())


def raw_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def valid_claims(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(uuid.uuid4()),
        "role": "staff",
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=15)).timestamp()),
        "jti": "jti-1",
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


# --- Tokens -----------------------------------------------------------------------------------


def test_round_trip(tokens: Tokens) -> None:
    user_id = uuid.uuid4()
    now = datetime.now(UTC)
    token = tokens.issue_access(user_id, "provider", now=now)

    claims = tokens.decode_access(token)
    assert claims.user_id == user_id
    assert claims.role == "provider"
    assert claims.jti
    expected_expiry = datetime.fromtimestamp(int(now.timestamp()), UTC) + timedelta(minutes=15)
    assert claims.expires_at == expected_expiry
    assert claims.expires_at.tzinfo is not None


def test_issued_claims_and_header(tokens: Tokens) -> None:
    token = tokens.issue_access(uuid.uuid4(), "patient")
    assert jwt.get_unverified_header(token)["alg"] == JWT_ALGORITHM == "HS256"
    claims = raw_claims(token)
    assert set(claims) == {"sub", "role", "exp", "iat", "jti"}
    assert claims["exp"] - claims["iat"] == 900


def test_ttl_follows_settings() -> None:
    short = Tokens(make_settings(access_token_minutes=5))
    claims = raw_claims(short.issue_access(uuid.uuid4(), "patient"))
    assert claims["exp"] - claims["iat"] == 300
    assert short.access_ttl == timedelta(minutes=5)
    assert short.refresh_ttl == timedelta(days=30)


def test_jti_is_unique(tokens: Tokens) -> None:
    user_id = uuid.uuid4()
    now = datetime.now(UTC)
    first = tokens.decode_access(tokens.issue_access(user_id, "patient", now=now))
    second = tokens.decode_access(tokens.issue_access(user_id, "patient", now=now))
    assert first.jti != second.jti


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_tampered_signature_is_rejected(tokens: Tokens) -> None:
    token = tokens.issue_access(uuid.uuid4(), "patient")
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    with pytest.raises(InvalidToken):
        tokens.decode_access(f"{header}.{payload}.{_b64(bytes(raw))}")


def test_tampered_payload_is_rejected(tokens: Tokens) -> None:
    token = tokens.issue_access(uuid.uuid4(), "patient")
    header, _, signature = token.split(".")
    claims = raw_claims(token)
    claims["role"] = "admin"
    forged_payload = _b64(orjson.dumps(claims))
    with pytest.raises(InvalidToken):
        tokens.decode_access(f"{header}.{forged_payload}.{signature}")


def test_other_secret_is_rejected(tokens: Tokens) -> None:
    other = Tokens(make_settings(jwt_secret="another-unit-secret-" + "o" * 40))
    with pytest.raises(InvalidToken):
        tokens.decode_access(other.issue_access(uuid.uuid4(), "patient"))


@pytest.mark.parametrize("missing", ["sub", "role", "exp", "iat", "jti"])
def test_missing_claims_are_rejected(tokens: Tokens, missing: str) -> None:
    token = jwt.encode(valid_claims(**{missing: None}), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        tokens.decode_access(token)


def test_crafted_valid_token_is_accepted(tokens: Tokens) -> None:
    # Control for the rejection tests: the same crafting with nothing removed decodes.
    claims = valid_claims()
    decoded = tokens.decode_access(jwt.encode(claims, SECRET, algorithm="HS256"))
    assert str(decoded.user_id) == claims["sub"]
    assert decoded.role == "staff"


def test_expired_token_is_rejected(tokens: Tokens) -> None:
    issued = datetime.now(UTC) - timedelta(hours=2)
    with pytest.raises(InvalidToken):
        tokens.decode_access(tokens.issue_access(uuid.uuid4(), "patient", now=issued))


def test_a_token_verified_before_is_refused_once_it_has_expired(tokens: Tokens) -> None:
    token = tokens.issue_access(uuid.uuid4(), "patient")
    claims = tokens.decode_access(token)
    assert tokens.decode_access(token) == claims  # the second use, from the verified tokens
    tokens.clock = lambda: claims.expires_at.timestamp()  # the instant it expires
    with pytest.raises(InvalidToken):
        tokens.decode_access(token)


def test_a_tampered_copy_of_a_verified_token_is_still_rejected(tokens: Tokens) -> None:
    token = tokens.issue_access(uuid.uuid4(), "patient")
    tokens.decode_access(token)
    header, payload, signature = token.split(".")
    with pytest.raises(InvalidToken):
        tokens.decode_access(f"{header}.{payload}.{signature[:-2]}AA")


def test_alg_none_is_rejected(tokens: Tokens) -> None:
    token = jwt.encode(valid_claims(), None, algorithm="none")
    with pytest.raises(InvalidToken):
        tokens.decode_access(token)


def test_other_algorithm_with_the_right_secret_is_rejected(tokens: Tokens) -> None:
    token = jwt.encode(valid_claims(), SECRET, algorithm="HS384")
    with pytest.raises(InvalidToken):
        tokens.decode_access(token)


@pytest.mark.parametrize("sub", ["not-a-uuid", "", "12345"])
def test_non_uuid_subject_is_rejected(tokens: Tokens, sub: str) -> None:
    token = jwt.encode(valid_claims(sub=sub), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        tokens.decode_access(token)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 500, "eyJhbGciOiJIUzI1NiJ9.e30."])
def test_garbage_is_rejected(tokens: Tokens, garbage: str) -> None:
    with pytest.raises(InvalidToken):
        tokens.decode_access(garbage)


def test_issued_tokens_live_exactly_the_configured_lifetime(tokens: Tokens) -> None:
    # A fractional `now` must not make `exp - iat` a second longer than the lifetime.
    now = datetime(2031, 5, 6, 7, 8, 9, 999_999, tzinfo=UTC)
    claims = raw_claims(tokens.issue_access(uuid.uuid4(), "patient", now=now))
    assert claims["exp"] - claims["iat"] == 15 * 60


@pytest.mark.parametrize(
    ("iat_ago", "lifetime"),
    [
        (timedelta(0), timedelta(minutes=15, seconds=1)),  # one second too long
        (timedelta(minutes=1), timedelta(days=365)),  # a year-long token, freshly minted
        (timedelta(hours=23), timedelta(days=1)),  # issued long ago, still "unexpired"
    ],
)
def test_correctly_signed_token_living_longer_than_configured_is_rejected(
    tokens: Tokens, iat_ago: timedelta, lifetime: timedelta
) -> None:
    issued = datetime.now(UTC) - iat_ago
    claims = valid_claims(iat=int(issued.timestamp()), exp=int((issued + lifetime).timestamp()))
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="lifetime"):
        tokens.decode_access(token)


def test_token_of_exactly_the_configured_lifetime_is_accepted(tokens: Tokens) -> None:
    issued = int(datetime.now(UTC).timestamp())
    token = jwt.encode(valid_claims(iat=issued, exp=issued + 15 * 60), SECRET, algorithm="HS256")
    assert tokens.decode_access(token).expires_at == datetime.fromtimestamp(issued + 900, UTC)


def test_lifetime_cap_follows_the_setting() -> None:
    long_lived = Tokens(make_settings(access_token_minutes=30))
    short_lived = Tokens(make_settings(access_token_minutes=5))
    token = long_lived.issue_access(uuid.uuid4(), "patient")
    assert long_lived.decode_access(token)
    # Lowering the setting retires the longer tokens already out there.
    with pytest.raises(InvalidToken, match="lifetime"):
        short_lived.decode_access(token)


def test_token_issued_in_the_future_is_rejected(tokens: Tokens) -> None:
    # Otherwise a short `exp - iat` placed far ahead would be a long-lived token.
    later = int((datetime.now(UTC) + timedelta(days=1)).timestamp())
    token = jwt.encode(valid_claims(iat=later, exp=later + 60), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        tokens.decode_access(token)


# --- refresh secrets --------------------------------------------------------------------------


def test_hash_refresh_secret_is_deterministic() -> None:
    secret = new_refresh_secret()
    assert hash_refresh_secret(secret) == hash_refresh_secret(secret)
    assert re.fullmatch(r"[0-9a-f]{64}", hash_refresh_secret(secret))
    assert hash_refresh_secret(secret) != secret
    assert hash_refresh_secret(secret) != hash_refresh_secret(secret + "x")


def test_new_refresh_secrets_are_unique_and_long() -> None:
    secrets = {new_refresh_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert len(secret) >= 43
        assert re.fullmatch(r"[A-Za-z0-9_-]+", secret)


# --- Passwords --------------------------------------------------------------------------------


async def test_password_hash_and_verify(passwords: Passwords) -> None:
    hashed = await passwords.hash("correct horse battery staple")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await passwords.verify(hashed, "correct horse battery staple") is True
    assert await passwords.verify(hashed, "wrong horse battery staple") is False
    assert await passwords.verify(hashed, "") is False


async def test_password_hashes_are_salted(passwords: Passwords) -> None:
    first = await passwords.hash("same password")
    second = passwords.hash_sync("same password")
    assert first != second
    assert await passwords.verify(second, "same password") is True


async def test_verify_with_no_hash_is_false(passwords: Passwords) -> None:
    assert await passwords.verify(None, "anything at all") is False
    assert await passwords.verify(None, "") is False


async def test_verify_with_a_malformed_hash_is_false(passwords: Passwords) -> None:
    assert await passwords.verify("not-a-hash", "anything") is False
    assert await passwords.verify("$argon2id$v=19$m=19456,t=2,p=1$broken", "anything") is False
