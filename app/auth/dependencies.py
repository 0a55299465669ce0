"""Who is calling: bearer-token authentication and role requirements, shared by every domain."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.errors import Unauthorized
from app.auth.principals import Principal as Principal  # where every domain imports it from
from app.auth.principals import PrincipalCache
from app.kit.errors import Forbidden
from app.kit.logging import user_id_var
from app.kit.rate_limit import Limiter
from app.kit.security import InvalidToken, Passwords, Tokens
from app.models import Role

_bearer = HTTPBearer(auto_error=False, description="Access token from POST /v1/auth/token")


async def get_tokens(request: Request) -> Tokens:
    tokens: Tokens = request.app.state.tokens
    return tokens


async def get_passwords(request: Request) -> Passwords:
    passwords: Passwords = request.app.state.passwords
    return passwords


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    limiter: Limiter,
) -> Principal:
    """The caller, as the database knows them: the token names the user, and the account's
    current state (exists, active, role, staff clinic) decides what they may do."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("A bearer access token is required.")
    state = request.app.state
    tokens: Tokens = state.tokens
    try:
        claims = tokens.decode_access(credentials.credentials)
        # A role we never issue means a token we did not issue. The role that counts for
        # authorization is the database's, below, not this claim.
        Role(claims.role)
    except (InvalidToken, ValueError) as exc:
        raise Unauthorized("The access token is invalid or expired.") from exc
    user_id_var.set(str(claims.user_id))
    await limiter.enforce(limiter.policies.per_user, str(claims.user_id))
    principals: PrincipalCache = state.principals
    principal = await principals.get(claims.user_id)
    if principal is None:
        raise Unauthorized("The account no longer exists or is disabled.")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits only the given roles (403 `forbidden` for the others)."""
    allowed = frozenset(roles)

    async def dependency(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            raise Forbidden(f"This action requires one of: {', '.join(sorted(allowed))}.")
        return principal

    return dependency


AdminPrincipal = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
Passwords_ = Annotated[Passwords, Depends(get_passwords)]
Tokens_ = Annotated[Tokens, Depends(get_tokens)]
