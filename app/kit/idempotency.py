"""Idempotency keys for creating POSTs (audit F5), after draft-ietf-httpapi-idempotency-key-header.

A key is scoped to the user. Within the request's transaction:

1. a transaction-scoped advisory lock on (user, key) is *tried*: if another request holds it,
   that request is still in flight -> 409 `idempotency_in_flight` (no waiting, no blocking);
2. a stored outcome for the key (younger than 24 h) is replayed with `Idempotent-Replayed: true`
   when the request matches, or refused with 422 `idempotency_key_reused` when it does not;
3. otherwise the handler runs, and its response is stored in the same transaction, so the
   booking and its key commit together or not at all. A request that fails (4xx, 5xx) stores
   nothing: retrying it with the same key runs it again.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit.errors import (
    IdempotencyInFlight,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    ValidationFailed,
)
from app.kit.metrics import IDEMPOTENT_REPLAYS

KEY_LIFETIME = timedelta(hours=24)
REPLAY_HEADER = "Idempotent-Replayed"
_KEY_SHAPE = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as header values allow

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:scope, 0))")
# The CTE removes an expired key; the SELECT still sees it (same snapshot) and the caller
# ignores it by age, so one round trip does both.
_READ = text(
    """
    WITH expired AS (
        DELETE FROM idempotency_keys
        WHERE user_id = :user_id AND key = :key AND created_at < :cutoff
    )
    SELECT method, path, request_hash, status_code, response_body, created_at
    FROM idempotency_keys
    WHERE user_id = :user_id AND key = :key
    """
)
_STORE = text(
    """
    INSERT INTO idempotency_keys
        (user_id, key, method, path, request_hash, status_code, response_body, completed_at)
    VALUES (:user_id, :key, :method, :path, :request_hash, :status_code,
            CAST(:response_body AS jsonb), now())
    """
)
_EXPIRE = text("DELETE FROM idempotency_keys WHERE created_at < :cutoff")


async def idempotency_key(
    key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str:
    if key is None or not key.strip():
        raise IdempotencyKeyMissing("Send an Idempotency-Key header with this request.")
    if not _KEY_SHAPE.match(key):
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            loc=("header", "Idempotency-Key"),
        )
    return key


IdempotencyKeyHeader = Annotated[str, Depends(idempotency_key)]


@dataclass(frozen=True)
class IdempotentCall:
    user_id: uuid.UUID
    key: str
    method: str
    path: str
    request_hash: str

    @classmethod
    def of(cls, request: Request, user_id: uuid.UUID, key: str, body: BaseModel) -> IdempotentCall:
        canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(
            request.method.encode() + b"\n" + request.url.path.encode() + b"\n" + canonical
        ).hexdigest()
        return cls(user_id, key, request.method, request.url.path, digest)

    def _ids(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "key": self.key}


async def run_idempotent(
    session: AsyncSession,
    call: IdempotentCall,
    handler: Callable[[], Awaitable[BaseModel]],
    *,
    status_code: int,
) -> JSONResponse:
    """Run `handler` once per (user, key); replay its stored response on a matching retry."""
    locked = await session.scalar(_TRY_LOCK, {"scope": f"{call.user_id}/{call.key}"})
    if not locked:
        raise IdempotencyInFlight("A request with this Idempotency-Key is still being processed.")
    now = datetime.now(UTC)
    stored = (
        await session.execute(_READ, {**call._ids(), "cutoff": now - KEY_LIFETIME})
    ).one_or_none()
    if stored is not None and stored.created_at >= now - KEY_LIFETIME:
        if (stored.method, stored.path, stored.request_hash) != (
            call.method,
            call.path,
            call.request_hash,
        ):
            raise IdempotencyKeyReused("This Idempotency-Key was used for a different request.")
        IDEMPOTENT_REPLAYS.inc()
        return JSONResponse(
            stored.response_body, status_code=stored.status_code, headers={REPLAY_HEADER: "true"}
        )
    result = await handler()
    body = result.model_dump(mode="json")
    await session.execute(
        _STORE,
        {
            **call._ids(),
            "method": call.method,
            "path": call.path,
            "request_hash": call.request_hash,
            "status_code": status_code,
            "response_body": orjson.dumps(body).decode(),
        },
    )
    return JSONResponse(body, status_code=status_code)


async def expire_keys(session: AsyncSession, now: datetime | None = None) -> int:
    """Delete keys older than their lifetime (run by a cron job)."""
    cutoff = (now or datetime.now(UTC)) - KEY_LIFETIME
    result = await session.execute(_EXPIRE, {"cutoff": cutoff})
    return int(getattr(result, "rowcount", 0) or 0)
