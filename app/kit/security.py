"""Password hashing (argon2id), access tokens (JWT, pinned algorithm) and refresh-token secrets."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from app.settings import Settings

# Pinned: tokens that name any other algorithm (including "none") are rejected.
JWT_ALGORITHM = "HS256"


class Passwords:
    """argon2id hashing, run in a worker thread so a login never blocks the event loop."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        # Verified against when the account does not exist, so timing does not reveal it.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash or self._dummy_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        ok = await asyncio.to_thread(check)
        return ok and password_hash is not None


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    role: str
    jti: str
    expires_at: datetime


class InvalidToken(Exception):
    pass


# Access tokens whose signature and claims were verified, with their expiry: a client sends
# the same token with every request for its whole lifetime, and checking the HMAC and the
# claims again was 6 % of the CPU of an authenticated listing. Bounded, oldest out first; only
# tokens that passed every check get in, and their expiry is checked on every use.
_VERIFIED_TOKENS = 4096


class Tokens:
    def __init__(self, settings: Settings) -> None:
        self._secret = settings.jwt_secret.get_secret_value()
        self.access_ttl = timedelta(minutes=settings.access_token_minutes)
        self._access_seconds = int(self.access_ttl.total_seconds())
        self.refresh_ttl = timedelta(days=settings.refresh_token_days)
        self._verified: dict[str, tuple[AccessClaims, float]] = {}
        self.clock = time.time  # seconds since the epoch; tests move it

    def issue_access(self, user_id: uuid.UUID, role: str, *, now: datetime | None = None) -> str:
        issued = int((now or datetime.now(UTC)).timestamp())
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "role": role,
            "iat": issued,
            # Whole seconds from a whole-second `iat`, so `exp - iat` is exactly the lifetime.
            "exp": issued + self._access_seconds,
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def decode_access(self, token: str) -> AccessClaims:
        """The claims of a valid access token; `InvalidToken` for anything else, including a
        correctly signed token whose lifetime (`exp - iat`) exceeds the configured one: a key
        that leaked, or an issuer configured differently, cannot mint long-lived tokens."""
        verified = self._verified.get(token)
        if verified is not None:
            claims_of, expires = verified
            if self.clock() < expires:  # PyJWT's test: expired once `exp <= now`
                return claims_of
            del self._verified[token]
            raise InvalidToken("Signature has expired")
        access = self._decode(token)
        if len(self._verified) >= _VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (access, access.expires_at.timestamp())
        return access

    def _decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                options={"require": ["sub", "role", "exp", "iat", "jti"]},
            )
            lifetime = int(claims["exp"]) - int(claims["iat"])
            if lifetime > self._access_seconds:
                raise InvalidToken(f"token lifetime {lifetime}s exceeds {self._access_seconds}s")
            return AccessClaims(
                user_id=uuid.UUID(str(claims["sub"])),
                role=str(claims["role"]),
                jti=str(claims["jti"]),
                expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from exc


def new_refresh_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_refresh_secret(secret: str) -> str:
    """Refresh tokens are high-entropy, so a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(secret.encode()).hexdigest()
