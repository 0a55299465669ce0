from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.kit.db import AnyRow
from app.models import Clinic, RefreshToken, User

# Built once: it runs on every principal-cache miss.
_USER_STATE = select(User.role, User.is_active, User.clinic_id).where(
    User.id == bindparam("user_id")
)


async def clinic_exists(session: AsyncSession, clinic_id: uuid.UUID) -> bool:
    return await session.get(Clinic, clinic_id) is not None


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def get_user_state(connection: AsyncConnection, user_id: uuid.UUID) -> AnyRow | None:
    """(role, is_active, clinic_id) of one user by primary key: what authorization needs."""
    return (await connection.execute(_USER_STATE, {"user_id": user_id})).one_or_none()


async def update_user(
    session: AsyncSession, user_id: uuid.UUID, values: dict[str, Any]
) -> User | None:
    """Apply `values` to one user and return it, or None when there is no such user."""
    statement = update(User).where(User.id == user_id).values(**values).returning(User)
    return (await session.execute(statement)).scalar_one_or_none()


async def delete_user(session: AsyncSession, user_id: uuid.UUID) -> bool:
    result = await session.execute(delete(User).where(User.id == user_id))
    return bool(getattr(result, "rowcount", 0))


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(func.lower(User.email) == email.lower()))
    return result.scalar_one_or_none()


async def insert_user(
    session: AsyncSession,
    *,
    email: str,
    password_hash: str,
    full_name: str,
    role: str,
    clinic_id: uuid.UUID | None = None,
) -> User | None:
    """Insert a user; None when the email is taken (case-insensitively), race-free."""
    statement = (
        insert(User)
        .values(
            email=email,
            password_hash=password_hash,
            full_name=full_name,
            role=role,
            clinic_id=clinic_id,
        )
        .on_conflict_do_nothing(index_elements=[text("lower(email)")])
        .returning(User)
    )
    result = await session.execute(statement)
    return result.scalar_one_or_none()


async def insert_refresh_token(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    family_id: uuid.UUID,
    token_hash: str,
    expires_at: datetime,
) -> None:
    session.add(
        RefreshToken(
            user_id=user_id, family_id=family_id, token_hash=token_hash, expires_at=expires_at
        )
    )
    await session.flush()


async def spend_refresh_token(
    session: AsyncSession, token_hash: str, now: datetime
) -> tuple[uuid.UUID, uuid.UUID] | None:
    """Atomically mark a live token spent; (user_id, family_id) when this call spent it."""
    statement = (
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == token_hash,
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(revoked_at=now)
        .returning(RefreshToken.user_id, RefreshToken.family_id)
    )
    row = (await session.execute(statement)).one_or_none()
    return (row.user_id, row.family_id) if row else None


async def get_refresh_token(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    result = await session.execute(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash)
    )
    return result.scalar_one_or_none()


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, now: datetime) -> int:
    statement = (
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_dead_refresh_tokens(session: AsyncSession, older_than: datetime) -> int:
    """Delete tokens that expired or were revoked before `older_than`."""
    statement = text(
        "DELETE FROM refresh_tokens WHERE expires_at < :cutoff OR revoked_at < :cutoff"
    )
    result = await session.execute(statement, {"cutoff": older_than})
    return int(getattr(result, "rowcount", 0) or 0)
