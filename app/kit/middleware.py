"""Carebook's pure-ASGI middleware: request ids, the Host check, request-body limits, the
per-IP rate limit, compression, security headers, metrics, the access log and the last-resort
error handler, in one layer."""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipResponder, IdentityResponder
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.errors import problem_response
from app.kit.logging import request_id_var, user_id_var
from app.kit.metrics import HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, UNMATCHED_ROUTE
from app.kit.rate_limit import RateLimiter

logger = logging.getLogger("carebook.errors")
_ACCESS_LOGGER = "carebook.access"
access_logger = logging.getLogger(_ACCESS_LOGGER)
_MAX_CACHED_SERIES = 2_000

_DEFAULT_CACHE_CONTROL = {True: b"private, no-store", False: b"no-store"}
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# On every response. The API serves JSON and attachments, never pages to embed or run scripts
# in; the docs pages send a policy of their own (app.kit.docs), which this one does not replace.
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
# Probes and scrapers name the pod's address, not the public host, and build no URLs; they
# are not rate limited either.
_EXEMPT = ("/health/", "/metrics")


class Shortcut(Protocol):
    """A route answered before FastAPI when it can be: given the request's scope, the response
    FastAPI would give (its body in hand), or None to let the request through to FastAPI.
    `path` is the route's template, the request's metrics and access log label."""

    path: str

    async def __call__(self, scope: Scope) -> Response | None: ...


class AllowedHosts:
    """The host names a `Host` header may carry: exact names (a set), `*.domain` for any
    subdomain, `*` for any. Ports are ignored; names are compared case-insensitively."""

    def __init__(self, hosts: Iterable[str]) -> None:
        hosts = [host.lower() for host in hosts]
        self.any = "*" in hosts
        self.names = frozenset(host for host in hosts if not host.startswith("*."))
        self.suffixes = tuple(host[1:] for host in hosts if host.startswith("*."))

    def allows(self, header: bytes) -> bool:
        if self.any:
            return True
        value = header.decode("latin-1").lower()
        if value.startswith("["):  # an IPv6 literal, [::1]:8000
            name, closed, port = value.partition("]")
            if not closed or (port and not port.startswith(":")):
                return False
            name, port = name + "]", port[1:]
        else:
            name, _, port = value.partition(":")
        if port and not port.isdigit():
            return False
        return name in self.names or (bool(self.suffixes) and name.endswith(self.suffixes))


class RequestContextMiddleware:
    """The one Carebook layer around every request, so each pays for one wrapper, not five.

    In order: the request id; the Host check; the request-body limit; the per-client-IP rate
    limit (probes and metrics exempt); gzip for large responses to clients that accept it;
    security and cache headers on every response; and any unhandled error turned into a 500
    problem+json that carries the request id and nothing else (the trace goes to the log).

    It also writes the access log line and the request metrics, both labelled with the matched
    route's template (`/v1/appointments/{appointment_id}`), never the raw path, so ids cannot
    multiply label values; requests that matched no route share one label.

    Before the application, each request is offered to the app's `state.shortcuts` (cached
    answers served without FastAPI's routing and dependencies, `app.availability.shortcut`):
    what one returns is sent through the same compression, headers, metrics and log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        allowed_hosts: Iterable[str],
        path_body_limits: Mapping[str, int] | None = None,
        rate_limit: bool = False,
        gzip_minimum_size: int = 1024,
        gzip_level: int = 5,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = AllowedHosts(allowed_hosts)
        # Other limits for paths under a prefix (file uploads), still bounded.
        self.path_body_limits = dict(path_body_limits or {})
        self.rate_limit = rate_limit
        self.gzip_minimum_size = gzip_minimum_size
        self.gzip_level = gzip_level
        # Each (method, route, status)'s counter and histogram, looked up once rather than
        # through `labels()` (a lock and a label check) per request.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _limit_for(self, path: str) -> int:
        for prefix, limit in self.path_body_limits.items():
            if path.startswith(prefix):
                return limit
        return self.max_body_bytes

    def _record(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = (
                HTTP_REQUESTS.labels(method, route, status),
                HTTP_DURATION.labels(method, route, status),
            )
            # Methods are the client's to choose; beyond a sane number of series, look up.
            if len(self._series) < _MAX_CACHED_SERIES:
                self._series[key] = series
        series[0].inc()
        series[1].observe(elapsed)
        if access_logger.isEnabledFor(logging.INFO):
            # A record made directly: `Logger.info` would also walk the stack to find its
            # caller, for a file and line the JSON lines never show.
            access_logger.handle(
                access_logger.makeRecord(
                    _ACCESS_LOGGER,
                    logging.INFO,
                    __file__,
                    0,
                    "request",
                    (),
                    None,
                    extra={
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers = dict(scope["headers"])
        authorized = b"authorization" in headers
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        user_token = user_id_var.set(None)  # set by the auth dependency once it knows
        HTTP_IN_FLIGHT.inc()
        started = False
        status = 500
        began = time.perf_counter()
        # The per-IP budget's headers, for responses that carry none of a narrower policy.
        limit_headers: list[tuple[bytes, bytes]] = []

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                response_headers = message.get("headers", [])
                extra = [(b"x-request-id", request_id.encode("latin-1")), _NOSNIFF]
                has_cache_control = has_csp = has_limit = False
                for name, _ in response_headers:
                    lowered = name.lower()
                    has_cache_control = has_cache_control or lowered == b"cache-control"
                    has_csp = has_csp or lowered == b"content-security-policy"
                    has_limit = has_limit or lowered.startswith(b"ratelimit-")
                if not has_cache_control:
                    # Nothing is cacheable unless its route says so; what a bearer token
                    # fetched is never for shared caches.
                    extra.append((b"cache-control", _DEFAULT_CACHE_CONTROL[authorized]))
                if not has_csp:
                    extra.append(_API_CSP)
                # A narrower policy (user, login, booking) that refused speaks for itself.
                message["headers"] = [
                    *response_headers,
                    *(() if has_limit else limit_headers),
                    *extra,
                ]
            await send(message)

        try:
            path = scope["path"]
            host = headers.get(b"host")
            # No Host at all (HTTP/1.0): URLs are then built from the server's own address.
            exempt = path.startswith(_EXEMPT)
            if host is not None and not exempt and not self.allowed_hosts.allows(host):
                response = problem_response(
                    400,
                    "host_not_allowed",
                    title="Host not allowed",
                    detail="This server does not answer to the host named in the request.",
                    request_id=request_id,
                )
                await response(scope, receive, send_with_id)
                return
            limit = self._limit_for(path)
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                response = problem_response(
                    413,
                    "payload_too_large",
                    title="Payload too large",
                    detail=f"Request bodies are limited to {limit} bytes.",
                    request_id=request_id,
                )
                await response(scope, receive, send_with_id)
                return
            if self.rate_limit and not exempt:
                refusal = await self._check_rate(scope, request_id, limit_headers)
                if refusal is not None:
                    await refusal(scope, receive, send_with_id)
                    return
            target: ASGIApp = self.app
            answer: Response | None = None
            if not exempt:
                state = getattr(scope.get("app"), "state", None)  # None: not under an app
                shortcuts: Sequence[Shortcut] = getattr(state, "shortcuts", ())
                for shortcut in shortcuts:
                    try:
                        answer = await shortcut(scope)
                    except Exception:
                        # A shortcut only saves work: when it fails, FastAPI still answers.
                        logger.exception("shortcut failed", extra={"route": shortcut.path})
                        continue
                    if answer is not None:
                        scope["route"] = shortcut  # its `path` labels the metrics and the log
                        target = answer
                        break
            responder: ASGIApp
            gzip = b"gzip" in headers.get(b"accept-encoding", b"")
            if answer is not None and not gzip:
                # A shortcut's answer is a body in hand: what IdentityResponder would do to it
                # (Vary on a large one), without wrapping its send (a tenth of a cache hit).
                if len(answer.body) >= self.gzip_minimum_size:
                    answer.headers.add_vary_header("Accept-Encoding")
                await answer(scope, receive, send_with_id)
                return
            if gzip:
                responder = GZipResponder(
                    target, self.gzip_minimum_size, compresslevel=self.gzip_level
                )
            else:
                # Uncompressed, but large bodies still say `Vary: Accept-Encoding`.
                responder = IdentityResponder(target, self.gzip_minimum_size)
            await responder(scope, self._bounded(receive, limit), send_with_id)
        except Exception:
            logger.exception("unhandled error", extra={"path": scope.get("path")})
            if not started:
                response = problem_response(
                    500,
                    "internal_error",
                    title="Internal server error",
                    detail="An unexpected error occurred; quote the request id when reporting it.",
                    request_id=request_id,
                )
                await response(scope, receive, send_with_id)
        finally:
            HTTP_IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self._record(scope["method"], route, status, time.perf_counter() - began)
            user_id_var.reset(user_token)
            request_id_var.reset(token)

    @staticmethod
    async def _check_rate(
        scope: Scope, request_id: str, limit_headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        """The per-client-IP budget, checked before routing: None when the request may go on
        (its RateLimit-* headers then in `limit_headers`), else the 429 to answer."""
        limiter: RateLimiter = scope["app"].state.rate_limiter
        if not limiter.enabled:  # no limit, so no RateLimit-* fields describing one
            return None
        client = scope.get("client")
        decision = await limiter.check(limiter.policies.per_ip, client[0] if client else "unknown")
        if decision.allowed:
            limit_headers.extend(
                (k.lower().encode(), v.encode()) for k, v in decision.headers().items()
            )
            return None
        return problem_response(
            429,
            "rate_limited",
            title="Too many requests",
            detail="Too many requests from this address; retry after the given seconds.",
            headers={
                "Retry-After": str(max(1, math.ceil(decision.retry_after_ms / 1000))),
                **decision.headers(),
            },
            request_id=request_id,
        )

    def _bounded(self, receive: Receive, limit: int) -> Receive:
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPException from body reading; the handler renders it.
                    raise HTTPException(413, f"Request bodies are limited to {limit} bytes.")
            return message

        return bounded_receive
