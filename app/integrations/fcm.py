"""FCM HTTP v1 adapter: one push to one device token.

A token FCM no longer accepts (404 / `UNREGISTERED`, a 400 about the registration token, or
`SENDER_ID_MISMATCH`) comes back as `SendResult(outcome="remove_token")`, never retried: the
caller deletes the device. 429 and 5xx are retried (`Retry-After` honoured) by the shared policy.
FCM has no idempotency key, so a retry after a lost answer may deliver a push twice: pushes are
at least once, as FCM's own guidance on retries implies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from app.kit.resilience import (
    PermanentFailure,
    ResiliencePolicy,
    ResilientClient,
    ServiceAdapter,
    json_or_none,
)
from app.settings import Settings

logger = logging.getLogger(__name__)

SERVICE = "fcm"
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True)
class SendResult:
    """`sent` with FCM's message id, or `remove_token`: the token is dead, delete the device."""

    outcome: Literal["sent", "remove_token"]
    message_id: str | None = None
    reason: str | None = None  # FCM's error code when the token is to be removed

    @property
    def sent(self) -> bool:
        return self.outcome == "sent"

    @property
    def remove_token(self) -> bool:
        return self.outcome == "remove_token"


class Fcm(ServiceAdapter):
    """Pushes through FCM HTTP v1. Disabled (`enabled` False) without base URL and project id.

    Construct in the lifespan, `await aclose()` on shutdown (or use `async with`).
    """

    def __init__(self, settings: Settings, *, policy: ResiliencePolicy | None = None) -> None:
        base_url = settings.fcm_base_url
        reason = "CAREBOOK_FCM_BASE_URL is not set"
        if base_url is not None and not settings.fcm_project_id:
            base_url, reason = None, "CAREBOOK_FCM_PROJECT_ID is not set"
        headers: dict[str, str] = {}
        if settings.fcm_access_token is not None:
            headers["Authorization"] = f"Bearer {settings.fcm_access_token.get_secret_value()}"
        elif base_url is not None:
            logger.warning("fcm: no access token configured (CAREBOOK_FCM_ACCESS_TOKEN)")
        self.http = ResilientClient(
            SERVICE,
            base_url,
            policy or ResiliencePolicy.from_settings(settings),
            headers=headers,
            disabled_reason=reason,
        )
        self._path = f"/v1/projects/{quote(settings.fcm_project_id or '', safe='')}/messages:send"

    async def send(
        self, token: str, title: str, body: str, data: Mapping[str, str] | None = None
    ) -> SendResult:
        """Push one notification; `data` values must be strings (FCM refuses anything else)."""
        message = {
            "token": token,
            "notification": {"title": title, "body": body},
            "data": dict(data or {}),
        }
        try:
            response = await self.http.request("POST", self._path, json={"message": message})
        except PermanentFailure as error:
            reason = dead_token_reason(error.status_code, error.body)
            if reason is None:
                raise
            logger.info("fcm: token rejected (%s), to be removed", reason)
            return SendResult("remove_token", reason=reason)
        name = _get(json_or_none(response), "name")
        return SendResult("sent", message_id=name.rsplit("/", 1)[-1] if name else None)


def dead_token_reason(status_code: int, body: Any) -> str | None:
    """FCM's reason when an error says the device token is gone or invalid, else None."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "NOT_FOUND" if status_code == 404 else None
    details = error.get("details")
    details = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    fcm_codes = {d.get("errorCode") for d in details if d.get("@type") == _FCM_ERROR}
    if "UNREGISTERED" in fcm_codes:
        return "UNREGISTERED"
    if status_code == 404:
        return "NOT_FOUND"
    if status_code == 403 and "SENDER_ID_MISMATCH" in fcm_codes:
        return "SENDER_ID_MISMATCH"
    if status_code == 400 and error.get("status") == "INVALID_ARGUMENT":
        fields = {
            violation.get("field")
            for d in details
            if d.get("@type") == _BAD_REQUEST
            for violation in d.get("fieldViolations") or []
            if isinstance(violation, dict)
        }
        message = str(error.get("message", "")).lower()
        if "message.token" in fields or "registration token" in message:
            return "INVALID_ARGUMENT"
    return None


def _get(body: Any, name: str) -> str | None:
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None
