"""Rate limiting (audit F15): GCRA, atomic in Redis, with a per-process fallback.

Each policy allows `rate` requests per `period` with a burst of `burst`. In Redis the check
and update are one Lua script using Redis' own clock, so every API process shares one budget.
When Redis is unreachable (its circuit is open) the same algorithm runs in process memory:
limits get per-process instead of switching off.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.kit.cache import RedisCircuit
from app.kit.errors import RateLimited
from app.kit.metrics import RATE_LIMIT_REJECTIONS
from app.kit.redis import run_script
from app.settings import Settings

_GCRA = """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - interval * burst
if allow_at > now then
  return {0, allow_at - now, tat - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return {1, math.floor((now - (new_tat - interval * burst)) / interval), new_tat - now}
"""
_LOCAL_KEYS = 50_000

logger = logging.getLogger("carebook.rate_limit")


@dataclass(frozen=True)
class Policy:
    name: str
    rate: float  # requests per second, sustained
    burst: int

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.rate


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy: Policy
    remaining: int
    retry_after_ms: float
    reset_ms: float

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.policy.burst),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(math.ceil(self.reset_ms / 1000)),
        }

    def raise_if_denied(self) -> None:
        if not self.allowed:
            error = RateLimited(
                math.ceil(self.retry_after_ms / 1000),
                f"Too many requests ({self.policy.name}); retry after the given seconds.",
            )
            error.headers.update(self.headers())
            raise error


@dataclass(frozen=True)
class Policies:
    per_ip: Policy
    per_user: Policy
    # Logins (app.auth.login_limits): per email and client address, per email and known
    # device, the looser ceiling per email across clients without a device, per address.
    login_per_client: Policy
    login_per_device: Policy
    login_per_email: Policy
    login_per_ip: Policy
    register_per_ip: Policy
    booking_per_user: Policy

    @classmethod
    def from_settings(cls, settings: Settings) -> Policies:
        def per_minute(name: str, count: int) -> Policy:
            return Policy(name, rate=count / 60.0, burst=count)

        return cls(
            per_ip=Policy("ip", settings.rate_limit_ip_per_second, settings.rate_limit_ip_burst),
            per_user=Policy(
                "user", settings.rate_limit_user_per_second, settings.rate_limit_user_burst
            ),
            login_per_client=per_minute("login", settings.rate_limit_login_per_minute),
            login_per_device=per_minute("login-device", settings.rate_limit_login_per_minute),
            login_per_email=Policy(
                "login-email",
                rate=settings.rate_limit_login_email_per_hour / 3600.0,
                burst=settings.rate_limit_login_email_per_hour,
            ),
            login_per_ip=per_minute("login-ip", settings.rate_limit_login_ip_per_minute),
            register_per_ip=per_minute("register", settings.rate_limit_register_per_minute),
            booking_per_user=per_minute("booking", settings.rate_limit_booking_per_minute),
        )


class LocalLimiter:
    """The same GCRA in process memory, bounded in the number of keys it remembers."""

    def __init__(self) -> None:
        self._tat: OrderedDict[str, float] = OrderedDict()

    def check(self, policy: Policy, key: str) -> Decision:
        now = time.monotonic() * 1000
        interval = policy.interval_ms
        tat = max(self._tat.get(key, now), now)
        allow_at = tat + interval - interval * policy.burst
        if allow_at > now:
            return Decision(False, policy, 0, allow_at - now, tat - now)
        new_tat = tat + interval
        self._tat[key] = new_tat
        self._tat.move_to_end(key)
        while len(self._tat) > _LOCAL_KEYS:
            self._tat.popitem(last=False)
        remaining = math.floor((now - (new_tat - interval * policy.burst)) / interval)
        return Decision(True, policy, remaining, 0, new_tat - now)


class RateLimiter:
    def __init__(
        self,
        redis: Redis | None,
        circuit: RedisCircuit,
        policies: Policies,
        *,
        enabled: bool = True,
    ) -> None:
        self.redis = redis
        self.circuit = circuit
        self.policies = policies
        self.enabled = enabled
        self.local = LocalLimiter()
        self.rejections: dict[str, int] = {}
        self._script = redis.register_script(_GCRA) if redis is not None else None

    async def check(self, policy: Policy, key: str) -> Decision:
        if not self.enabled:
            return Decision(True, policy, policy.burst, 0, 0)
        full_key = f"cb:rl:{policy.name}:{key}"
        decision = await self._redis_check(policy, full_key)
        if decision is None:
            decision = self.local.check(policy, full_key)
        if not decision.allowed:
            self.rejections[policy.name] = self.rejections.get(policy.name, 0) + 1
            RATE_LIMIT_REJECTIONS.labels(policy.name).inc()
        return decision

    async def _redis_check(self, policy: Policy, key: str) -> Decision | None:
        if self._script is None or self.circuit.is_open:
            return None
        try:
            allowed, value, reset = await run_script(
                self._script, [key], [repr(policy.interval_ms), repr(policy.burst)]
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self.circuit.failed(exc, "rate limiter: redis failed, limiting per process")
            return None
        self.circuit.succeeded()
        if allowed:
            return Decision(True, policy, int(value), 0, float(reset))
        return Decision(False, policy, 0, float(value), float(reset))

    async def enforce(self, policy: Policy, key: str) -> Decision:
        decision = await self.check(policy, key)
        decision.raise_if_denied()
        return decision


async def get_rate_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limiter
    return limiter


def client_ip(request: Request) -> str:
    # uvicorn rewrites the client from X-Forwarded-For only for trusted proxies
    # (--forwarded-allow-ips), so this cannot be spoofed from outside.
    return request.client.host if request.client else "unknown"


Limiter = Annotated[RateLimiter, Depends(get_rate_limiter)]
