"""Idempotency keys for creating POSTs (audit F5), after draft-ietf-httpapi-idempotency-key-header.

A key is scoped to the user. The handler runs first, in the request's transaction; its response
is then stored with one `INSERT … ON CONFLICT` as the transaction's last write, so the change
and its key commit together or not at all:

* the INSERT returns its row: the key was free (or held only an expired outcome, which it
  replaces) and the transaction commits;
* it returns nothing: the key holds a live outcome. A concurrent request with the same key
  made the INSERT wait on its uncommitted row until it committed, so at most one change per
  key ever commits. This one is rolled back and the stored outcome is replayed with
  `Idempotent-Replayed: true` when the request matches, or refused with 422
  `idempotency_key_reused` when it does not.

A refusal (an `AppError`) is answered from the stored outcome as well when the key holds one:
the retry of a booking finds its slot taken, by itself. A request that fails stores nothing:
retrying it with the same key runs it again.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit import sql
from app.kit.db import discard_after_commit
from app.kit.errors import AppError, ValidationFailed
from app.kit.metrics import IDEMPOTENT_REPLAYS
from app.kit.pagination import item_json

KEY_LIFETIME = timedelta(hours=24)
REPLAY_HEADER = "Idempotent-Replayed"
_KEY_SHAPE = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as header values allow


class IdempotencyKeyMissing(AppError):
    status, code, title = 400, "idempotency_key_missing", "Idempotency-Key header required"


class IdempotencyKeyReused(AppError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused"


class IdempotencyInFlight(AppError):
    status, code, title = 409, "idempotency_in_flight", "Request with this key in progress"


_READ = sql.Statement(
    text(
        """
    SELECT method, path, request_hash, status_code, response_body
    FROM idempotency_keys
    WHERE user_id = :user_id AND key = :key AND created_at >= :cutoff
    """
    )
)
# DO UPDATE only over an expired outcome: a live one is left alone and nothing is returned.
_STORE = sql.Statement(
    text(
        """
    INSERT INTO idempotency_keys
        (user_id, key, method, path, request_hash, status_code, response_body, completed_at)
    VALUES (:user_id, :key, :method, :path, :request_hash, :status_code,
            CAST(:response_body AS jsonb), now())
    ON CONFLICT (user_id, key) DO UPDATE SET
        method = EXCLUDED.method, path = EXCLUDED.path, request_hash = EXCLUDED.request_hash,
        status_code = EXCLUDED.status_code, response_body = EXCLUDED.response_body,
        created_at = now(), completed_at = now()
    WHERE idempotency_keys.created_at < :cutoff
    RETURNING true
    """
    )
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
    handler: Callable[[], Awaitable[BaseModel | Mapping[str, Any]]],
    *,
    status_code: int,
) -> Response:
    """Run `handler` once per (user, key); replay its stored response on a matching retry."""
    try:
        result = await handler()
    except AppError as exc:
        if exc.commits:
            raise
        stored = await _stored_after_refusal(session, call, exc)
        if stored is None:
            raise
        return _replay(stored, call)
    # Encoded once, for the record and the response: what JSONResponse would send, byte for
    # byte (compact, UTF-8), without encoding it a second time with the json module. A handler
    # may answer with the model's plain values instead (`item_json`), sparing the model.
    if isinstance(result, BaseModel):
        encoded = orjson.dumps(result.model_dump(mode="json"))
    else:
        encoded = item_json(result)
    cutoff = datetime.now(UTC) - KEY_LIFETIME
    params = {
        **call._ids(),
        "method": call.method,
        "path": call.path,
        "request_hash": call.request_hash,
        "status_code": status_code,
        "response_body": encoded.decode(),
        "cutoff": cutoff,
    }
    if await sql.fetchval(session, _STORE, params):
        return Response(encoded, status_code=status_code, media_type="application/json")
    # The key holds a live outcome (committed meanwhile, or before this request started): this
    # statement's snapshot is newer than the conflict, so it sees the row.
    stored = await _read(session, call, cutoff)
    await _roll_back(session)
    if stored is None:
        # Its holder is gone meanwhile (the user was deleted): nothing to replay, nothing done.
        raise IdempotencyInFlight("A request with this Idempotency-Key was being processed.")
    return _replay(stored, call)


async def _read(
    session: AsyncSession, call: IdempotentCall, cutoff: datetime | None = None
) -> Any | None:
    params = {**call._ids(), "cutoff": cutoff or datetime.now(UTC) - KEY_LIFETIME}
    # Before BEGIN when the handler wrote nothing (refused at once): a refusal then sends
    # neither BEGIN nor ROLLBACK.
    return await sql.fetchrow(session, _READ, params, before_begin=True)


async def _stored_after_refusal(
    session: AsyncSession, call: IdempotentCall, exc: AppError
) -> Any | None:
    """The live outcome stored for the key, read after the handler refused; whatever the
    handler wrote is rolled back either way."""
    if isinstance(exc.__cause__, DBAPIError):
        # A failed statement aborted the transaction: it must end before anything is read.
        await _roll_back(session)
    # Otherwise on the transaction (and connection) the refusal came from.
    stored = await _read(session, call)
    await _roll_back(session)
    return stored


async def _roll_back(session: AsyncSession) -> None:
    """Undo the handler's work, and the after-commit follow-ups it registered (events to
    publish): the request may still succeed, as a replay, and its session then commits."""
    await session.rollback()
    discard_after_commit(session)


def _replay(stored: Any, call: IdempotentCall) -> JSONResponse:
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


async def expire_keys(session: AsyncSession, now: datetime | None = None) -> int:
    """Delete keys older than their lifetime (run by a cron job)."""
    cutoff = (now or datetime.now(UTC)) - KEY_LIFETIME
    result = await session.execute(_EXPIRE, {"cutoff": cutoff})
    return int(getattr(result, "rowcount", 0) or 0)
