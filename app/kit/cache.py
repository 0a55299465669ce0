"""Redis response cache with event-driven invalidation (audit F6).

Freshness first: every cached value lives under a key that embeds the *versions* of what it was
computed from (one per provider, one for the catalogue, and for availability one per provider
and local date). A change bumps the versions after its transaction commits, so the very next
request, in any process, looks up a key that does not exist yet and recomputes. TTLs are only a
backstop. A booking bumps only the dates it may change: the provider's windows without them
stay cached.

Speed second: a lookup is one round trip (a Lua script reads the versions and the versioned key
together); concurrent misses of one key compute once per process (single flight) and, across
processes, once per lock holder while the others briefly wait for its result.

Redis is an accelerator, never a dependency: every call has a short timeout, and after a few
failures an in-process circuit skips Redis for a while instead of waiting on it each request.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

from fastapi import Depends, Request
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.kit.events import Events
from app.kit.metrics import CACHE_REQUESTS, REDIS_CIRCUIT_OPENINGS, REDIS_FAILURES
from app.kit.redis import PoolExhausted, run_script

logger = logging.getLogger("carebook.cache")

T = TypeVar("T")

_PREFIX = "cb:v1"
# Part of every key, with the scope's version: bumped after an outage in which a version bump
# may have been lost, it makes everything cached before the outage unreachable at once.
GENERATION_KEY = f"{_PREFIX}:generation"
# After a miss: the value once more (a holder may have stored it since the lookup) or, if it is
# still missing, the computation's lock; in one round trip, so no process can take the lock
# just after another released it with the value stored, and compute a second time.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return {2} end
return {3}
"""
_CLAIM_FOUND, _CLAIM_LOCKED, _CLAIM_BUSY = 1, 2, 3
_LOCK_MILLISECONDS = 5000
# KEYS: the generation, then every version the value depends on (the scope's first); ARGV:
# the value's key before and after the versions. The key is built here only. A hit answers the
# value alone (the hot path parses one bulk string); a miss answers {key}, for the caller that
# fills it.
_LOOKUP = """
local parts = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do parts[i] = parts[i] or '0' end
local key = ARGV[1] .. table.concat(parts, '.') .. ARGV[2]
local value = redis.call('GET', key)
if value then return value end
return {key}
"""
# KEYS: the versions to bump; ARGV[1]: their lifetime. One command however many scopes a
# change touches, where a pipeline packed and parsed an INCR and an EXPIRE per scope.
_BUMP = """
for i = 1, #KEYS do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return #KEYS
"""
# Versions outlive every value that embeds them (values live minutes).
_VERSION_TTL_SECONDS = 7 * 24 * 3600
_LOCK_WAIT_SECONDS = 1.0
_LOCK_POLL_SECONDS = 0.02
_BUMP_ATTEMPTS = 3


class RedisCircuit:
    """Opens after `threshold` consecutive failures; while open, Redis is not called at all.
    After `cooldown` seconds one call is let through to probe whether Redis is back.

    An exhausted connection pool is not a failure: Redis answers, this process is merely asking
    too much at once. It is counted apart and never opens the circuit. Failure warnings are
    throttled, since under load every caller fails at once and each would log its own line."""

    def __init__(
        self, threshold: int = 3, cooldown: float = 5.0, warn_every_seconds: float = 10.0
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._failures = 0
        self._opened_at: float | None = None
        # Times the circuit opened: a cache compares it to know it may have missed bumps.
        self.outages = 0
        self._warn_every = warn_every_seconds
        self._last_warning: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    @property
    def is_open(self) -> bool:
        if self._opened_at is None:
            return False
        if time.monotonic() - self._opened_at >= self.cooldown:
            self._opened_at = time.monotonic()  # half-open: this caller probes, others skip
            return False
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failed(self, exc: BaseException, what: str = "redis call failed") -> None:
        """Record a failed call: `what` names it in the (throttled) warning."""
        if isinstance(exc, PoolExhausted):
            REDIS_FAILURES.labels("pool_exhausted").inc()
            self.warn(f"{what}: the Redis pool stayed busy", exc)
            return
        self.warn(what, exc)
        REDIS_FAILURES.labels("error").inc()
        self._failures += 1
        if self._failures >= self.threshold:
            if self._opened_at is None:
                logger.warning("redis circuit opened: serving without Redis")
                self.outages += 1
                REDIS_CIRCUIT_OPENINGS.inc()
            self._opened_at = time.monotonic()

    def warn(self, message: str, exc: BaseException) -> None:
        """One warning per message per interval, carrying how many were held back since."""
        now = time.monotonic()
        last = self._last_warning.get(message)
        if last is not None and now - last < self._warn_every:
            self._suppressed[message] = self._suppressed.get(message, 0) + 1
            return
        self._last_warning[message] = now
        suppressed = self._suppressed.pop(message, 0)
        logger.warning(message, extra={"error": type(exc).__name__, "suppressed": suppressed})


@dataclass(frozen=True)
class Scope:
    """What a cached value depends on: its version key names it (`provider:<id>`, `catalog`)."""

    name: str

    @functools.cached_property
    def version_key(self) -> str:
        return f"{_PREFIX}:ver:{self.name}"


CATALOG = Scope("catalog")


def provider_scope(provider_id: object) -> Scope:
    return Scope(f"provider:{provider_id}")


def profile_scope(provider_id: object) -> Scope:
    """A provider's profile: bumped by changes of the provider or of its user account, never
    by bookings (a profile does not change with them)."""
    return Scope(f"profile:{provider_id}")


def availability_scope(provider_id: object) -> Scope:
    """All of the provider's availability: bumped by changes that are not bounded by dates
    (a schedule, an event without a range)."""
    return Scope(f"availability:{provider_id}")


# Kept per (provider, range): every availability request and change names its dates' scopes,
# and building them (a Scope and two strings per date) was 5 % of a cache hit. At most about
# 12 kB an entry (31 dates).
@functools.lru_cache(maxsize=1024)
def availability_day_scopes(provider_id: object, first: date, last: date) -> tuple[Scope, ...]:
    """The provider's availability on each local date from `first` to `last` inclusive.

    Per date rather than per week: in the mixed load a week-wide version made every booking
    invalidate a third of the cached 7-day windows of its provider, most of them needlessly."""
    return tuple(
        Scope(f"availability:{provider_id}:day:{first + timedelta(days=k)}")
        for k in range((last - first).days + 1)
    )


async def get_cache(request: Request) -> Cache:
    cache: Cache = request.app.state.cache
    return cache


class Cache:
    def __init__(
        self,
        redis: Redis | None,
        circuit: RedisCircuit | None = None,
        *,
        staleness: Sequence[Staleness] = (),
    ) -> None:
        self.redis = redis
        # Which events make which values stale (`on_events`); none without declarations.
        self.staleness = tuple(staleness)
        self.circuit = circuit or RedisCircuit()
        self._lookup = redis.register_script(_LOOKUP) if redis is not None else None
        self._claim_script = redis.register_script(_CLAIM) if redis is not None else None
        self._bump_script = redis.register_script(_BUMP) if redis is not None else None
        self._in_flight: dict[str, asyncio.Future[bytes]] = {}
        # Set when this process may have missed a version bump (a bump failed, or Redis was
        # unreachable long enough to open the circuit, so other processes may have failed
        # theirs): the first successful contact afterwards bumps the generation.
        self._suspect_stale = False
        self._outages_seen = self.circuit.outages
        # How long a process waits for another's computation before computing itself: bounded,
        # so a holder that died or is slow costs the others at most this much.
        self.lock_wait_seconds = _LOCK_WAIT_SECONDS

    @property
    def available(self) -> bool:
        return self.redis is not None and not self.circuit.is_open

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        if not self.available:
            return None
        try:
            await self._recover_if_needed()
            result = await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            self.circuit.failed(exc)
            return None
        self.circuit.succeeded()
        return result

    async def get_or_compute(
        self,
        name: str,
        scope: Scope,
        key: str,
        compute: Callable[[], Awaitable[bytes]],
        *,
        ttl_seconds: int,
        within: Sequence[Scope] = (),
    ) -> bytes:
        """The cached bytes for `key` at the current versions of the scope and of the finer
        scopes `within` it the value also depends on (dates), computing them on a miss."""
        version_keys, prefix, suffix = _address(name, scope, key, within)
        found = await self._call(lambda: self._lookup_script(version_keys, prefix, suffix))
        if isinstance(found, bytes):
            CACHE_REQUESTS.labels(name, "hit").inc()
            return found
        CACHE_REQUESTS.labels(name, "miss").inc()
        full_key = found[0].decode() if found is not None else None
        return await self._single_flight(
            full_key or f"{prefix}?{suffix}", lambda: self._fill(full_key, compute, ttl_seconds)
        )

    async def lookup(
        self, name: str, scope: Scope, key: str, *, within: Sequence[Scope] = ()
    ) -> bytes | None:
        """The value `get_or_compute` would return from the cache, or None, computing nothing.
        A hit is counted as one; a miss is not, so that the caller that then computes through
        `get_or_compute` counts it once."""
        version_keys, prefix, suffix = _address(name, scope, key, within)
        found = await self._call(lambda: self._lookup_script(version_keys, prefix, suffix))
        if not isinstance(found, bytes):
            return None
        CACHE_REQUESTS.labels(name, "hit").inc()
        return found

    async def _lookup_script(self, version_keys: list[str], prefix: str, suffix: str) -> Any:
        assert self._lookup is not None
        return await run_script(self._lookup, version_keys, [prefix, suffix])

    async def _recover_if_needed(self) -> None:
        if self.circuit.outages != self._outages_seen:
            self._outages_seen = self.circuit.outages
            self._suspect_stale = True
        if not self._suspect_stale:
            return
        assert self.redis is not None
        # Cleared before the await: the concurrent callers that also find Redis back must not
        # each bump the generation (hundreds of bumps empty the cache over and over).
        self._suspect_stale = False
        try:
            await self.redis.incr(GENERATION_KEY)
        except BaseException:
            self._suspect_stale = True
            raise
        logger.warning("redis is back: cache generation bumped, earlier values are unreachable")

    async def _single_flight(self, key: str, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else has to
            raise
        finally:
            self._in_flight.pop(key, None)
        future.set_result(value)
        return value

    async def _fill(
        self, full_key: str | None, compute: Callable[[], Awaitable[bytes]], ttl_seconds: int
    ) -> bytes:
        if full_key is None:  # Redis unavailable: straight to the database
            return await compute()
        redis = self.redis
        assert redis is not None
        lock_key = f"{full_key}:lock"
        claim = await self._call(lambda: self._claim(full_key, lock_key))
        if claim is not None and claim[0] == _CLAIM_FOUND:
            return bytes(claim[1])
        if claim is not None and claim[0] == _CLAIM_BUSY:
            # Another process is computing this very key: wait briefly for its result.
            deadline = time.monotonic() + self.lock_wait_seconds
            while time.monotonic() < deadline:
                await asyncio.sleep(_LOCK_POLL_SECONDS)
                value = await self._call(lambda: redis.get(full_key))
                if value is not None:
                    return bytes(value)
        value = await compute()
        await self._call(lambda: self._store(full_key, lock_key, value, ttl_seconds))
        return value

    async def _claim(self, full_key: str, lock_key: str) -> Any:
        assert self._claim_script is not None
        return await run_script(self._claim_script, [full_key, lock_key], [_LOCK_MILLISECONDS])

    async def _store(self, full_key: str, lock_key: str, value: bytes, ttl_seconds: int) -> None:
        assert self.redis is not None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(full_key, value, ex=ttl_seconds)
            pipe.delete(lock_key)
            await pipe.execute()

    async def bump(self, *scopes: Scope) -> None:
        """Move scopes to a new version: every key computed from them is unreachable at once."""
        if not scopes or self._bump_script is None:
            return
        keys = [scope.version_key for scope in scopes]
        script = self._bump_script

        async def incr() -> None:
            await self._recover_if_needed()
            await run_script(script, keys, [_VERSION_TTL_SECONDS])

        # Attempted even with the circuit open: a missed bump is a stale value later, in every
        # process. So a bump is tried again, up to a few times, when it failed for a reason that
        # does not mean Redis is down: a busy pool (Redis is up, this process is asking too
        # much), or a timeout while the circuit is closed (a starved machine is likelier than an
        # outage). Repeating an INCR that did land is harmless: only the change counts.
        retry_timeouts = not self.circuit.is_open
        for attempt in range(1, _BUMP_ATTEMPTS + 1):
            try:
                await incr()
            except PoolExhausted as exc:
                self.circuit.failed(exc, "cache version bump waited")
            except (RedisError, OSError, TimeoutError) as exc:
                self.circuit.failed(
                    exc, "cache version bump failed; the generation is bumped when Redis answers"
                )
                if not (retry_timeouts and isinstance(exc, (RedisTimeoutError, TimeoutError))):
                    self._suspect_stale = True
                    return
            else:
                self.circuit.succeeded()
                return
            if attempt == _BUMP_ATTEMPTS:
                self._suspect_stale = True

    async def get_many(self, name: str, keys: Sequence[str]) -> list[bytes | None]:
        """Plain values (no versioning) in one round trip; all None when Redis is away."""
        redis = self.redis
        if not keys or redis is None:
            return [None] * len(keys)
        full = [f"{_PREFIX}:{name}:{key}" for key in keys]
        found: list[Any] | None = await self._call(lambda: redis.mget(full))
        if found is None:
            return [None] * len(keys)
        values = [None if value is None else bytes(value) for value in found]
        for value in values:
            CACHE_REQUESTS.labels(name, "miss" if value is None else "hit").inc()
        return values

    async def set_many(self, name: str, values: Mapping[str, bytes], *, ttl_seconds: int) -> None:
        """Store plain values with a TTL in one round trip; a failure is only logged."""
        if not values or not self.available:
            return
        redis = self.redis
        assert redis is not None

        async def store() -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for key, value in values.items():
                    pipe.set(f"{_PREFIX}:{name}:{key}", value, ex=ttl_seconds)
                await pipe.execute()

        await self._call(store)

    async def on_events(self, events: Events) -> None:
        """Bump the scopes of every cached value that committed events make stale, by the
        domains' `Staleness` declarations; each scope once however many events touch it."""
        scopes: dict[str, Scope] = {}
        for topic, payload in events:
            for declared in self.staleness:
                if topic.startswith(declared.prefix):
                    scopes.update(
                        (scope.version_key, scope) for scope in declared.scopes(topic, payload)
                    )
        await self.bump(*scopes.values())

    async def on_event(self, topic: str, payload: dict[str, Any]) -> None:
        await self.on_events([(topic, payload)])


CacheDep = Annotated["Cache", Depends(get_cache)]


def _address(
    name: str, scope: Scope, key: str, within: Sequence[Scope]
) -> tuple[list[str], str, str]:
    """The version keys a value depends on, and its key around the versions' joined values."""
    if len(key) > 64:  # free-text parameters stay out of key names (and their length)
        key = hashlib.sha256(key.encode()).hexdigest()
    version_keys = [GENERATION_KEY, scope.version_key, *(s.version_key for s in within)]
    return version_keys, f"{_PREFIX}:{name}:{scope.name}:", f":{key}"


# A slot overlapping a change starts at most this long before it (`slot_minutes` <= 480), and
# booking rules' buffers (DESIGN.md: up to 120 minutes) would widen that on both sides.
_BEFORE = timedelta(minutes=480 + 120)
_AFTER = timedelta(minutes=120)
# Beyond this many dates a range bumps the whole provider: one INCR instead of dozens.
_MAX_DAYS_PER_CHANGE = 31


@dataclass(frozen=True, slots=True)
class Staleness:
    """Which cached values the events of one topic family make stale, declared by the domain
    that emits them (next to its topics); the cache knows scopes, not domains.

    An event that names a `provider_id` makes stale the provider's scope and its availability:
    all of it, or with `dated` only the local dates its `starts_at`/`ends_at` (and
    `previous_*`) bound. A dated event leaves the provider's profile as it was; any other
    changes it. A topic in `moves` changed an earlier range too: without the payload's
    previous times, it makes all of the provider's availability stale. With `by_user`, an
    event that names a `user_id` instead makes stale that user's provider profile. With
    `lists`, the catalogue's lists change as well."""

    prefix: str
    dated: bool = False
    moves: tuple[str, ...] = ()
    by_user: bool = False
    lists: bool = False

    def scopes(self, topic: str, payload: Mapping[str, Any]) -> list[Scope]:
        touched: list[Scope] = []
        if "provider_id" in payload:
            provider_id = payload["provider_id"]
            touched.append(provider_scope(provider_id))
            dates = self._touched_dates(topic, payload) if self.dated else None
            if dates is None:
                touched.append(availability_scope(provider_id))
            else:
                touched.extend(
                    day
                    for first, last in dates
                    for day in availability_day_scopes(provider_id, first, last)
                )
            if not self.dated:
                touched.append(profile_scope(provider_id))
        elif self.by_user and "user_id" in payload:
            # A provider's id is its user's: a renamed or removed provider's profile.
            touched.append(profile_scope(payload["user_id"]))
        if self.lists:
            touched.append(CATALOG)
        return touched

    def _touched_dates(
        self, topic: str, payload: Mapping[str, Any]
    ) -> list[tuple[date, date]] | None:
        """The local date ranges whose availability the event may change, or None for "all of
        the provider's" (the event has no usable range)."""
        zone_name = payload.get("timezone")
        try:
            zone = ZoneInfo(zone_name) if isinstance(zone_name, str) else None
            ranges = [_instants(payload, "starts_at", "ends_at")]
            if "previous_starts_at" in payload or "previous_ends_at" in payload:
                ranges.append(_instants(payload, "previous_starts_at", "previous_ends_at"))
            elif "old_starts_at" in payload:
                # An older payload with the previous start only: appointments last at most a day.
                old_start = _instant(payload, "old_starts_at")
                ranges.append((old_start, old_start + timedelta(days=1)))
            elif topic in self.moves:
                return None  # where it was is unknown
            dates = []
            for starts_at, ends_at in ranges:
                if zone is not None:
                    first = (starts_at - _BEFORE).astimezone(zone).date()
                    last = (ends_at + _AFTER).astimezone(zone).date()
                else:
                    # Without the provider's zone: every UTC offset is within 14 hours and the
                    # margins are 10 and 2 hours, so a day either side covers every date.
                    first = starts_at.astimezone(UTC).date() - timedelta(days=1)
                    last = ends_at.astimezone(UTC).date() + timedelta(days=1)
                if last < first or (last - first).days >= _MAX_DAYS_PER_CHANGE:
                    return None
                dates.append((first, last))
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        return dates


def _instants(payload: Mapping[str, Any], start: str, end: str) -> tuple[datetime, datetime]:
    return _instant(payload, start), _instant(payload, end)


def _instant(payload: Mapping[str, Any], key: str) -> datetime:
    value = datetime.fromisoformat(payload[key])
    if value.tzinfo is None:
        raise ValueError("an instant without an offset is ambiguous")
    return value
