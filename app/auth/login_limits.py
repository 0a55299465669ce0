"""Login limits that stop password guessing without letting a stranger lock an owner out
(ADR 0007).

A login attempt is charged, in order, to:

1. its client address (`login-ip`): one address spraying many accounts;
2. if it presents a *device token* for this email (`Carebook-Device`, handed out by a
   successful login): that device's own budget (`login-device`), and nothing else;
3. otherwise to the email *from this address* (`login`), and to the email across all
   addresses that hold no device token (`login-email`, a looser hourly ceiling).

So guesses from elsewhere never touch the budget of the owner's address, and no number of
guesses from anywhere touches the budget of a device the owner already logged in from. What a
stranger can still exhaust is the ceiling, and only for clients without a device token. Holders
of a refresh token are not limited here at all: `/v1/auth/refresh` has no per-email limit.

A device token grants nothing but its own budget: it is bound to one email, signed with a key
derived from the JWT secret (domain-separated), and expires after the refresh-token lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Annotated

from fastapi import Depends, Request

from app.kit.rate_limit import RateLimiter
from app.settings import Settings

DEVICE_HEADER = "Carebook-Device"
_VERSION = "d1"


class DeviceTokens:
    """Issues and checks the signed, per-email device tokens of successful logins."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.jwt_secret.get_secret_value().encode()
        self._key = hmac.new(secret, b"carebook/v1/login-device", hashlib.sha256).digest()
        self.ttl_seconds = settings.refresh_token_days * 86_400

    def _sign(self, email: str, issued: str, nonce: str) -> str:
        message = "\n".join((_VERSION, email, issued, nonce)).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, email: str, *, now: float | None = None) -> str:
        issued = str(int(time.time() if now is None else now))
        nonce = secrets.token_urlsafe(12)
        return ".".join((_VERSION, issued, nonce, self._sign(email.lower(), issued, nonce)))

    def device_of(self, token: str | None, email: str, *, now: float | None = None) -> str | None:
        """The device id of a genuine, unexpired token for this email; else None."""
        if not token:
            return None
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
            return None
        _, issued, nonce, sig = parts
        expected = self._sign(email.lower(), issued, nonce)
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            return None
        if int(issued) + self.ttl_seconds <= (time.time() if now is None else now):
            return None
        return nonce


async def enforce_login_limits(
    limiter: RateLimiter, devices: DeviceTokens, *, email: str, address: str, device: str | None
) -> None:
    """Raise `RateLimited` when this attempt is over a budget (see the module docstring)."""
    email = email.lower()
    policies = limiter.policies
    await limiter.enforce(policies.login_per_ip, address)
    device_id = devices.device_of(device, email)
    if device_id is not None:
        await limiter.enforce(policies.login_per_device, f"{email}:{device_id}")
        return
    await limiter.enforce(policies.login_per_client, f"{email}:{address}")
    await limiter.enforce(policies.login_per_email, email)


async def get_device_tokens(request: Request) -> DeviceTokens:
    devices: DeviceTokens = request.app.state.device_tokens
    return devices


Devices = Annotated[DeviceTokens, Depends(get_device_tokens)]
