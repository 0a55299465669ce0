"""Pure-ASGI middleware: request ids, request-body limits, and the last-resort error handler."""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.errors import problem_response
from app.kit.logging import request_id_var, user_id_var
from app.kit.metrics import HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, UNMATCHED_ROUTE
from app.kit.rate_limit import RateLimiter

logger = logging.getLogger("carebook.errors")
access_logger = logging.getLogger("carebook.access")

_DEFAULT_CACHE_CONTROL = {True: b"private, no-store", False: b"no-store"}
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestContextMiddleware:
    """Assigns the request id, bounds the body size and turns any unhandled error into a 500
    problem+json that carries the request id and nothing else (the trace goes to the log).

    It also writes the access log line and the request metrics, both labelled with the matched
    route's template (`/v1/appointments/{appointment_id}`), never the raw path, so ids cannot
    multiply label values; requests that matched no route share one label."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        path_body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Other limits for paths under a prefix (file uploads), still bounded.
        self.path_body_limits = dict(path_body_limits or {})

    def _limit_for(self, path: str) -> int:
        for prefix, limit in self.path_body_limits.items():
            if path.startswith(prefix):
                return limit
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers = dict(scope.get("headers") or [])
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

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                extra = [(b"x-request-id", request_id.encode("latin-1"))]
                if not any(n.lower() == b"cache-control" for n, _ in message.get("headers", [])):
                    # Nothing is cacheable unless its route says so; what a bearer token
                    # fetched is never for shared caches.
                    extra.append((b"cache-control", _DEFAULT_CACHE_CONTROL[authorized]))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            limit = self._limit_for(scope.get("path", ""))
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
            await self.app(scope, self._bounded(receive, limit), send_with_id)
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
            elapsed = time.perf_counter() - began
            method = str(scope.get("method"))
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            HTTP_IN_FLIGHT.dec()
            HTTP_REQUESTS.labels(method, route, status).inc()
            HTTP_DURATION.labels(method, route, status).observe(elapsed)
            access_logger.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            user_id_var.reset(user_token)
            request_id_var.reset(token)

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


class RateLimitMiddleware:
    """The per-client-IP budget, checked before routing; probes and metrics are exempt."""

    _EXEMPT = ("/health/", "/metrics")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self._EXEMPT):
            await self.app(scope, receive, send)
            return
        limiter: RateLimiter = scope["app"].state.rate_limiter
        client = scope.get("client")
        decision = await limiter.check(limiter.policies.per_ip, client[0] if client else "unknown")
        headers = [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]
        if not decision.allowed:
            response = problem_response(
                429,
                "rate_limited",
                title="Too many requests",
                detail="Too many requests from this address; retry after the given seconds.",
                headers={
                    "Retry-After": str(max(1, math.ceil(decision.retry_after_ms / 1000))),
                    **decision.headers(),
                },
                request_id=scope.get("state", {}).get("request_id"),
            )
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                existing = message.get("headers", [])
                # A narrower policy (user, login, booking) that refused speaks for itself.
                if not any(name.lower().startswith(b"ratelimit-") for name, _ in existing):
                    message["headers"] = [*existing, *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)
