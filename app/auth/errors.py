"""The refusals of sign-up, login and tokens."""

from __future__ import annotations

from app.kit.errors import AppError


class InvalidCredentials(AppError):
    status, code, title = 401, "invalid_credentials", "Invalid credentials"


class Unauthorized(AppError):
    status, code, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class TokenReused(AppError):
    status, code, title = 401, "token_reused", "Refresh token reused"
    commits = True


class EmailTaken(AppError):
    status, code, title = 409, "email_taken", "Email already registered"
