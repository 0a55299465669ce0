from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, TypedDict

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import repository
from app.auth.dependencies import Principal
from app.auth.errors import EmailTaken, InvalidCredentials, TokenReused, Unauthorized
from app.auth.principals import USER_CHANGED, USER_DELETED
from app.auth.schemas import CreateUserIn, RegisterIn, TokenIn, TokenPair
from app.kit import outbox
from app.kit.errors import NotFound, ValidationFailed
from app.kit.security import Passwords, Tokens, hash_refresh_secret, new_refresh_secret
from app.models import Role, User


async def create_account(
    session: AsyncSession,
    passwords: Passwords,
    *,
    email: str,
    password: str,
    full_name: str,
    role: Role,
    clinic_id: uuid.UUID | None = None,
) -> User:
    if role is Role.STAFF and clinic_id is None:
        raise ValidationFailed("clinic_id is required for staff", loc=("body", "clinic_id"))
    if clinic_id is not None and not await repository.clinic_exists(session, clinic_id):
        raise ValidationFailed("clinic_id does not name a clinic", loc=("body", "clinic_id"))
    user = await repository.insert_user(
        session,
        email=email,
        password_hash=await passwords.hash(password),
        full_name=full_name,
        role=role.value,
        clinic_id=clinic_id,
    )
    if user is None:
        raise EmailTaken("An account with this email already exists.")
    return user


async def register_patient(session: AsyncSession, passwords: Passwords, data: RegisterIn) -> User:
    return await create_account(session, passwords, role=Role.PATIENT, **_identity(data))


async def create_operator(session: AsyncSession, passwords: Passwords, data: CreateUserIn) -> User:
    return await create_account(
        session, passwords, role=Role(data.role), clinic_id=data.clinic_id, **_identity(data)
    )


class _Identity(TypedDict):
    email: str
    password: str
    full_name: str


def _identity(data: RegisterIn | CreateUserIn) -> _Identity:
    return {"email": data.email, "password": data.password, "full_name": data.full_name}


async def _issue_pair(
    session: AsyncSession,
    tokens: Tokens,
    user: User,
    *,
    family_id: uuid.UUID | None = None,
    now: datetime,
) -> TokenPair:
    secret = new_refresh_secret()
    await repository.insert_refresh_token(
        session,
        user_id=user.id,
        family_id=family_id or uuid.uuid4(),
        token_hash=hash_refresh_secret(secret),
        expires_at=now + tokens.refresh_ttl,
    )
    return TokenPair(
        access_token=tokens.issue_access(user.id, user.role, now=now),
        refresh_token=secret,
        expires_in=int(tokens.access_ttl.total_seconds()),
    )


async def login(
    session: AsyncSession, passwords: Passwords, tokens: Tokens, data: TokenIn
) -> TokenPair:
    user = await repository.get_user_by_email(session, data.email)
    # Verify even when the account is missing so response time does not reveal it.
    valid = await passwords.verify(user.password_hash if user else None, data.password)
    if user is None or not valid or not user.is_active:
        raise InvalidCredentials("Email or password is incorrect.")
    return await _issue_pair(session, tokens, user, now=datetime.now(UTC))


async def refresh(session: AsyncSession, tokens: Tokens, refresh_token: str) -> TokenPair:
    now = datetime.now(UTC)
    token_hash = hash_refresh_secret(refresh_token)
    spent = await repository.spend_refresh_token(session, token_hash, now)
    if spent is None:
        known = await repository.get_refresh_token(session, token_hash)
        if known is not None and known.revoked_at is not None:
            # A spent token came back: someone holds a copy. Revoke the whole family; the
            # error commits so the revocation survives the 401.
            await repository.revoke_family(session, known.family_id, now)
            raise TokenReused("This refresh token was already used; its family is revoked.")
        raise Unauthorized("The refresh token is invalid or expired.")
    user_id, family_id = spent
    user = await repository.get_user(session, user_id)
    if user is None or not user.is_active:
        raise Unauthorized("The account is not active.")
    return await _issue_pair(session, tokens, user, family_id=family_id, now=now)


async def logout(session: AsyncSession, principal: Principal, refresh_token: str) -> None:
    known = await repository.get_refresh_token(session, hash_refresh_secret(refresh_token))
    # Another user's token is silently ignored: logout must not become a token oracle.
    if known is not None and known.user_id == principal.user_id:
        await repository.revoke_family(session, known.family_id, datetime.now(UTC))


async def me(session: AsyncSession, principal: Principal) -> User:
    user = await repository.get_user(session, principal.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("The account no longer exists or is disabled.")
    return user


class _Keep(enum.Enum):
    KEEP = enum.auto()


KEEP = _Keep.KEEP


async def change_user(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    role: Role | None = None,
    is_active: bool | None = None,
    clinic_id: uuid.UUID | _Keep | None = KEEP,
) -> User:
    """Change what a user may do. Emits `user.changed`, so this process forgets the cached
    principal at commit and every other process within `CAREBOOK_PRINCIPAL_CACHE_SECONDS`."""
    user = await repository.get_user(session, user_id)
    if user is None:
        raise NotFound("There is no such user.")
    values: dict[str, Any] = {}
    if role is not None:
        values["role"] = role.value
    if is_active is not None:
        values["is_active"] = is_active
    if clinic_id is not KEEP:
        if clinic_id is not None and not await repository.clinic_exists(session, clinic_id):
            raise ValidationFailed("clinic_id does not name a clinic", loc=("body", "clinic_id"))
        values["clinic_id"] = clinic_id
    staff = values.get("role", user.role) == Role.STAFF.value
    if staff and values.get("clinic_id", user.clinic_id) is None:
        raise ValidationFailed("clinic_id is required for staff", loc=("body", "clinic_id"))
    if not values:
        return user
    changed = await repository.update_user(session, user_id, values)
    if changed is None:  # deleted since it was read
        raise NotFound("There is no such user.")
    await outbox.emit(session, USER_CHANGED, {"user_id": str(user_id)})
    return changed


async def delete_user(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Delete a user (their refresh tokens go with them). Emits `user.deleted`."""
    if not await repository.delete_user(session, user_id):
        raise NotFound("There is no such user.")
    await outbox.emit(session, USER_DELETED, {"user_id": str(user_id)})
