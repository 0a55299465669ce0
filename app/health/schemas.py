from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


IntegrationState = Literal["disabled", "closed", "open", "half-open", "unknown"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "down"]
    redis: Literal["ok", "degraded"]
    # Per third-party service: "disabled" (not configured), else the circuit breaker state the
    # workers last reported ("unknown" before any worker did, or with Redis down). Never
    # affects readiness: a third-party outage degrades follow-ups, not the API.
    integrations: dict[str, IntegrationState] = {}
