from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status

from app.auth import service
from app.auth.dependencies import AdminPrincipal, CurrentPrincipal, Passwords_, Tokens_
from app.auth.login_limits import DEVICE_HEADER, Devices, enforce_login_limits
from app.auth.schemas import (
    CreateUserIn,
    LogoutIn,
    RefreshIn,
    RegisterIn,
    TokenIn,
    TokenPair,
    UserOut,
)
from app.kit.db import PrimaryReadSession, WriteSession
from app.kit.rate_limit import Limiter, client_ip

router = APIRouter(tags=["auth"])


@router.post("/v1/auth/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def register(
    request: Request,
    data: RegisterIn,
    session: WriteSession,
    passwords: Passwords_,
    limiter: Limiter,
) -> UserOut:
    await limiter.enforce(limiter.policies.register_per_ip, client_ip(request))
    user = await service.register_patient(session, passwords, data)
    return UserOut.model_validate(user)


@router.post(
    "/v1/auth/token",
    response_model=TokenPair,
    responses={
        200: {
            "headers": {
                DEVICE_HEADER: {
                    "description": "A device token for this email: sent back on later logins "
                    "from this client, it keeps them out of limits strangers can exhaust.",
                    "schema": {"type": "string"},
                }
            }
        }
    },
)
async def token(
    request: Request,
    response: Response,
    data: TokenIn,
    session: WriteSession,
    passwords: Passwords_,
    tokens: Tokens_,
    limiter: Limiter,
    devices: Devices,
    device: Annotated[str | None, Header(alias=DEVICE_HEADER, max_length=256)] = None,
) -> TokenPair:
    # Against guessing, spraying, and strangers locking an owner out: see login_limits.
    await enforce_login_limits(
        limiter, devices, email=data.email, address=client_ip(request), device=device
    )
    pair = await service.login(session, passwords, tokens, data)
    response.headers[DEVICE_HEADER] = devices.issue(data.email)
    return pair


@router.post("/v1/auth/refresh", response_model=TokenPair)
async def refresh(data: RefreshIn, session: WriteSession, tokens: Tokens_) -> TokenPair:
    return await service.refresh(session, tokens, data.refresh_token)


@router.post("/v1/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(data: LogoutIn, principal: CurrentPrincipal, session: WriteSession) -> None:
    await service.logout(session, principal, data.refresh_token)


@router.get("/v1/me", response_model=UserOut)
async def me(principal: CurrentPrincipal, session: PrimaryReadSession) -> UserOut:
    return UserOut.model_validate(await service.me(session, principal))


@router.post("/v1/users", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def create_user(
    data: CreateUserIn, _: AdminPrincipal, session: WriteSession, passwords: Passwords_
) -> UserOut:
    return UserOut.model_validate(await service.create_operator(session, passwords, data))
