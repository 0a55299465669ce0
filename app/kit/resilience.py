"""Resilient outgoing HTTP calls (audit F8, F13): timeouts, retries, circuit breaker, bulkhead.

One `ResilientClient` per third-party service owns one `httpx.AsyncClient`, one pybreaker
`CircuitBreaker` and one `asyncio.Semaphore`. Every attempt of a call goes

    bulkhead slot  →  breaker check  →  HTTP request with connect/read/write/pool timeouts

inside a tenacity retry loop that retries timeouts, connection errors, 5xx and 429 (honouring
`Retry-After`, capped) with exponential backoff and full jitter, and never other 4xx.

pybreaker does not understand coroutines (decorating an `async def` counts every call as a
success), so the breaker is used only as `with breaker.calling(): await ...`. Each attempt counts
once: a permanent 4xx counts as a success (the service answered), a timeout, connection error,
5xx or 429 as a failure, and so does a cancelled attempt (the service did not answer in time for
its caller). Breaker state is per process.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Self, cast

import httpx
import pybreaker
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from app.kit import telemetry
from app.kit.metrics import BREAKER_STATE, EXTERNAL_DURATION, EXTERNAL_REQUESTS
from app.settings import Settings

logger = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half-open"]
_STATE_VALUES: dict[str, float] = {"closed": 0.0, "half-open": 1.0, "open": 2.0}

# --- Errors ------------------------------------------------------------------------------------


class IntegrationError(Exception):
    """Base of every error raised by a third-party call."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service


class ServiceDisabled(IntegrationError):
    """The service has no base URL configured: nothing was sent."""


class TransientFailure(IntegrationError):
    """Transient: retries exhausted, breaker open or bulkhead full. Try again later.

    `retry_after` is the server's last `Retry-After` hint in seconds, when it gave one.
    """

    def __init__(self, service: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(service, message)
        self.retry_after = retry_after


class CircuitOpen(TransientFailure):
    """The breaker is open: the call failed fast without reaching the service."""


class BulkheadFull(TransientFailure):
    """Every slot of the service's bulkhead stayed busy for the allowed wait."""


class PermanentFailure(IntegrationError):
    """The service refused the request with a 4xx other than 429: retrying cannot help."""

    def __init__(self, service: str, status_code: int, body: Any) -> None:
        super().__init__(service, f"HTTP {status_code}")
        self.status_code = status_code
        self.body = body  # parsed JSON when the response was JSON, else its text


class InvalidResponse(IntegrationError):
    """A success status with a body the adapter cannot use (the API contract changed?)."""


class RetryableStatus(Exception):
    """A 5xx or 429 answer (internal: retried, then reported as `TransientFailure`)."""

    def __init__(self, status_code: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.retry_after = retry_after


RETRYABLE_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,  # connect, read, write and pool timeouts
    httpx.NetworkError,  # refused, reset, ...
    httpx.RemoteProtocolError,  # connection dropped before or during the response
)


# --- Policy ------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP-date); None if absent/invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class RetryAfterOrBackoff(wait_base):
    """Honour a 429/5xx `Retry-After` (capped), else exponential backoff with full jitter."""

    def __init__(self, *, base: float, cap: float) -> None:
        self.cap = cap
        self.backoff = wait_random_exponential(multiplier=base, max=cap)

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, RetryableStatus) and error.retry_after is not None:
            return min(self.cap, error.retry_after)
        return float(self.backoff(retry_state))


@dataclass(frozen=True)
class ResiliencePolicy:
    """Timeouts, retry, breaker and bulkhead limits for one service."""

    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    write_timeout: float = 5.0
    pool_timeout: float = 2.0
    retry_attempts: int = 4
    retry_base_seconds: float = 0.2
    retry_max_seconds: float = 5.0
    breaker_fail_max: int = 5
    breaker_reset_seconds: float = 30.0
    bulkhead_limit: int = 10
    bulkhead_wait_seconds: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ResiliencePolicy:
        return cls(
            connect_timeout=settings.http_connect_timeout_seconds,
            read_timeout=settings.http_read_timeout_seconds,
            write_timeout=settings.http_write_timeout_seconds,
            pool_timeout=settings.http_pool_timeout_seconds,
            retry_attempts=settings.http_retry_attempts,
            retry_base_seconds=settings.http_retry_base_seconds,
            retry_max_seconds=settings.http_retry_max_seconds,
            breaker_fail_max=settings.breaker_fail_max,
            breaker_reset_seconds=settings.breaker_reset_seconds,
            bulkhead_limit=settings.bulkhead_limit,
            bulkhead_wait_seconds=settings.bulkhead_wait_seconds,
        )

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect_timeout,
            read=self.read_timeout,
            write=self.write_timeout,
            pool=self.pool_timeout,
        )


# --- Breaker -----------------------------------------------------------------------------------


class _BreakerListener(pybreaker.CircuitBreakerListener):
    """Logs state changes and keeps the Prometheus gauge current."""

    def __init__(self, service: str) -> None:
        self.service = service

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        BREAKER_STATE.labels(self.service).set(_STATE_VALUES.get(new_state.name, 0.0))
        level = logging.WARNING if new_state.name == "open" else logging.INFO
        logger.log(
            level,
            "circuit breaker %s: %s -> %s",
            self.service,
            old_state.name if old_state is not None else None,
            new_state.name,
            extra={"service": self.service, "breaker_state": new_state.name},
        )


# --- Client ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    """What /health/ready and metrics show for one service."""

    service: str
    enabled: bool
    breaker: BreakerState | None  # None while disabled


class ResilientClient:
    """One third-party service: an `httpx.AsyncClient`, a breaker, a bulkhead, a retry policy.

    Create it in the lifespan (never at import time) and `await aclose()` it on shutdown.
    `base_url=None` makes a disabled client: `enabled` is False and calls raise `ServiceDisabled`.
    """

    def __init__(
        self,
        service: str,
        base_url: str | None,
        policy: ResiliencePolicy,
        *,
        headers: Mapping[str, str] | None = None,
        disabled_reason: str = "no base URL configured",
    ) -> None:
        self.service = service
        self.disabled_reason = disabled_reason
        self.policy = policy
        self._client: httpx.AsyncClient | None = None
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=policy.breaker_fail_max,
            reset_timeout=policy.breaker_reset_seconds,
            exclude=[PermanentFailure],  # the service answered: not a sign of ill health
            listeners=[_BreakerListener(service)],
            name=service,
        )
        self._bulkhead = asyncio.Semaphore(policy.bulkhead_limit)
        if base_url is None:
            logger.warning(
                "%s integration disabled: %s",
                service,
                disabled_reason,
                extra={"service": service},
            )
            return
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"User-Agent": "carebook/0.1", **(headers or {})},
            timeout=policy.timeout,
            limits=httpx.Limits(
                max_connections=policy.bulkhead_limit,
                max_keepalive_connections=policy.bulkhead_limit,
            ),
            follow_redirects=False,
        )
        telemetry.instrument_httpx(self._client)
        BREAKER_STATE.labels(service).set(0.0)
        logger.info("%s integration enabled at %s", service, base_url, extra={"service": service})

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @property
    def breaker_state(self) -> BreakerState:
        """The breaker's state as pybreaker holds it (`open` turns `half-open` on the next call)."""
        return cast(BreakerState, self.breaker.current_state)

    def status(self) -> ServiceStatus:
        return ServiceStatus(
            service=self.service,
            enabled=self.enabled,
            breaker=self.breaker_state if self.enabled else None,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        accept: Collection[int] = (),
    ) -> httpx.Response:
        """Send with retries; return a 2xx response, or one whose status is in `accept`.

        Raises `PermanentFailure` (other 4xx, never retried), `TransientFailure` (retries
        exhausted; `CircuitOpen`/`BulkheadFull` fail fast, without retrying) or `ServiceDisabled`.
        """
        if self._client is None:
            raise ServiceDisabled(self.service, self.disabled_reason)
        client = self._client
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.retry_attempts),
            wait=RetryAfterOrBackoff(
                base=self.policy.retry_base_seconds, cap=self.policy.retry_max_seconds
            ),
            retry=retry_if_exception_type((RetryableStatus, *RETRYABLE_TRANSPORT_ERRORS)),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(client, method, path, json, headers, accept)
        except RetryableStatus as error:
            raise TransientFailure(
                self.service,
                f"HTTP {error.status_code} after {self.policy.retry_attempts} attempts",
                retry_after=error.retry_after,
            ) from error
        except RETRYABLE_TRANSPORT_ERRORS as error:
            raise TransientFailure(
                self.service,
                f"{type(error).__name__} after {self.policy.retry_attempts} attempts",
            ) from error
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        json: Any,
        headers: Mapping[str, str] | None,
        accept: Collection[int],
    ) -> httpx.Response:
        """One attempt: bulkhead slot, then the breaker around the awaited request."""
        await self._acquire_slot()
        try:
            with self.breaker.calling():
                started = time.perf_counter()
                try:
                    response = await client.request(method, path, json=json, headers=headers)
                except RETRYABLE_TRANSPORT_ERRORS as error:
                    timeout = isinstance(error, httpx.TimeoutException)
                    EXTERNAL_REQUESTS.labels(
                        self.service, "timeout" if timeout else "network"
                    ).inc()
                    raise
                finally:
                    EXTERNAL_DURATION.labels(self.service).observe(time.perf_counter() - started)
                return self._classify(response, accept)
        except pybreaker.CircuitBreakerError as error:
            # Raised before the call when open, or instead of the failure that tripped it.
            cause = error.__cause__ or error.__context__
            if cause is not None and not isinstance(cause, Exception):
                raise cause from None  # a cancellation tripped it: cancellation must propagate
            if cause is None:
                EXTERNAL_REQUESTS.labels(self.service, "breaker_open").inc()
            raise CircuitOpen(self.service, str(error)) from cause
        finally:
            self._bulkhead.release()

    async def _acquire_slot(self) -> None:
        if not self._bulkhead.locked():
            await self._bulkhead.acquire()
            return
        try:
            async with asyncio.timeout(self.policy.bulkhead_wait_seconds):
                await self._bulkhead.acquire()
        except TimeoutError:
            EXTERNAL_REQUESTS.labels(self.service, "bulkhead_full").inc()
            raise BulkheadFull(
                self.service,
                f"all {self.policy.bulkhead_limit} slots busy for "
                f"{self.policy.bulkhead_wait_seconds}s",
            ) from None

    def _classify(self, response: httpx.Response, accept: Collection[int]) -> httpx.Response:
        status = response.status_code
        if response.is_success or status in accept:
            EXTERNAL_REQUESTS.labels(self.service, "ok").inc()
            return response
        if status == 429 or status >= 500:
            EXTERNAL_REQUESTS.labels(self.service, str(status)).inc()
            raise RetryableStatus(status, parse_retry_after(response.headers.get("Retry-After")))
        EXTERNAL_REQUESTS.labels(self.service, "rejected").inc()
        raise PermanentFailure(self.service, status, _body(response))

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        delay = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        logger.warning(
            "%s call failed (%s), retry %d in %.2fs",
            self.service,
            error if isinstance(error, RetryableStatus) else type(error).__name__,
            retry_state.attempt_number,
            delay,
            extra={"service": self.service, "attempt": retry_state.attempt_number},
        )


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def json_or_none(response: httpx.Response) -> Any:
    """The response's JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def breaker_key(service: str) -> str:
    return f"carebook:breaker:{service}"


class BreakerStatePublisher(pybreaker.CircuitBreakerListener):
    """Copies a worker's breaker state to Redis on every change. The API never calls the third
    parties itself, so this is how every replica's /health/ready shows the workers' view."""

    def __init__(self, redis: Redis, service: str) -> None:
        self.redis = redis
        self.service = service
        self._tasks: set[asyncio.Task[None]] = set()

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self.publish(new_state.name)

    def publish(self, state: str) -> None:
        # pybreaker calls listeners synchronously, from inside the event loop.
        task = asyncio.get_running_loop().create_task(self._set(state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set(self, state: str) -> None:
        try:
            await self.redis.set(breaker_key(self.service), state)
        except (RedisError, OSError):
            logger.debug("breaker state of %s not published: redis unavailable", self.service)


async def published_breaker_states(redis: Redis, services: list[str]) -> list[str | None]:
    """The breaker states workers last published, in the order of `services`."""
    values = await redis.mget([breaker_key(service) for service in services])
    return [value.decode() if isinstance(value, bytes) else value for value in values]


class ServiceAdapter:
    """Base of the third-party adapters: one `ResilientClient` each, and its lifecycle."""

    http: ResilientClient

    @property
    def enabled(self) -> bool:
        return self.http.enabled

    @property
    def service(self) -> str:
        return self.http.service

    def status(self) -> ServiceStatus:
        return self.http.status()

    def publish_breaker_state(self, redis: Redis) -> None:
        """From now on, mirror this process's breaker state to Redis (workers do this)."""
        if not self.enabled:
            return
        publisher = BreakerStatePublisher(redis, self.service)
        self.http.breaker.add_listener(publisher)
        publisher.publish(self.http.breaker_state)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
