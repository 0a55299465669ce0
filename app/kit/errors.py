"""One error model for the whole API: RFC 9457 problem details with a stable `code` member.

Domain code raises `AppError` subclasses; `install_error_handlers` renders them, FastAPI's
validation errors, the router's own 404/405 and database outages in the same shape. Unexpected
exceptions are handled by `app.kit.middleware.RequestContextMiddleware`, which logs them and
answers a bare 500 problem with the request id and nothing else.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

logger = logging.getLogger("carebook.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"


class AppError(Exception):
    """A domain error that carries its HTTP status and stable problem `code`."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"
    # Errors that record state on the way out (a revoked token family) ask the unit of work to
    # commit instead of rolling back.
    commits: bool = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra or {}


class ValidationFailed(AppError):
    status, code, title = 422, "validation_error", "Invalid request"

    def __init__(self, detail: str, *, loc: Sequence[str | int] = ()) -> None:
        super().__init__(detail, extra={"errors": [{"loc": list(loc), "msg": detail}]})


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    status, code, title = 404, "not_found", "Not found"


class RangeTooLarge(AppError):
    status, code, title = 422, "range_too_large", "Range too large"


class RateLimited(AppError):
    status, code, title = 429, "rate_limited", "Too many requests"

    def __init__(self, retry_after_seconds: int, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_seconds))})


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class ServiceUnavailable(AppError):
    status, code, title = 503, "service_unavailable", "Service temporarily unavailable"


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


def problem_response(
    status: int,
    code: str,
    *,
    title: str | None = None,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"https://carebook.dev/problems/{code.replace('_', '-')}",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or title or HTTPStatus(status).phrase,
        "code": code,
    }
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return Response(
        content=orjson.dumps(body),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _request_id(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def _loc(raw: Sequence[Any]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in raw]


async def _app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return problem_response(
        exc.status,
        exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
        extra=exc.extra,
        request_id=_request_id(request),
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        # Only location and message: pydantic's `input` may echo a password back.
        {"loc": _loc(err.get("loc", ())), "msg": str(err.get("msg", "invalid value"))}
        for err in exc.errors()
    ]
    return problem_response(
        422,
        "validation_error",
        title="Invalid request",
        detail="The request is not valid; see `errors`.",
        extra={"errors": errors},
        request_id=_request_id(request),
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem_response(
        exc.status_code,
        code,
        detail=detail,
        headers=dict(exc.headers or {}),
        request_id=_request_id(request),
    )


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    # The SQLSTATE tells a timeout (57014), a lock wait (55P03) and a lost server (08xxx) apart.
    logger.warning(
        "database unavailable",
        extra={"error": type(exc).__name__, "sqlstate": _sqlstate(exc), "path": request.url.path},
    )
    return problem_response(
        503,
        "service_unavailable",
        title="Service temporarily unavailable",
        detail="The database did not answer in time; retry later.",
        headers={"Retry-After": "1"},
        request_id=_request_id(request),
    )


def _sqlstate(exc: Exception) -> str | None:
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(
        getattr(orig, "__cause__", None), "sqlstate", None
    )
    return sqlstate if isinstance(sqlstate, str) else None


def _is_unavailability(exc: DBAPIError) -> bool:
    """Connection loss, timeouts and cancellations: the client may retry; nothing else is."""
    if isinstance(exc, InterfaceError) or exc.connection_invalidated:
        return True
    sqlstate = _sqlstate(exc)
    # 57014 query_canceled (statement_timeout), 55P03 lock_not_available (lock_timeout),
    # 40001/40P01 serialization failure and deadlock (nothing was committed; a retry may pass),
    # 57P0x server shutting down, 08xxx connection exceptions.
    return isinstance(sqlstate, str) and (
        sqlstate in {"57014", "55P03", "40001", "40P01", "57P01", "57P02", "57P03"}
        or sqlstate.startswith("08")
    )


# Values that passed validation but that PostgreSQL cannot hold: the request is at fault, and
# its transaction rolled back, so nothing was stored. The backstop behind every schema.
_UNSTORABLE_INPUT = {
    "22021": "A text contains a character that cannot be stored (such as NUL).",
    "22P05": "A text contains a character that cannot be stored (such as NUL).",
    "22008": "A date or time is out of the supported range.",
    "22003": "A number is out of the supported range.",
}


async def _dbapi_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DBAPIError)
    if _is_unavailability(exc):
        return await _database_unavailable(request, exc)
    message = _UNSTORABLE_INPUT.get(_sqlstate(exc) or "")
    if message is not None:
        logger.info("input refused by the database", extra={"sqlstate": _sqlstate(exc)})
        return problem_response(
            422,
            "validation_error",
            title="Invalid request",
            detail=message,
            extra={"errors": [{"loc": ["request"], "msg": message}]},
            request_id=_request_id(request),
        )
    raise exc


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PoolTimeoutError, _database_unavailable)
    app.add_exception_handler(ConnectionError, _database_unavailable)
    # A database host missing from DNS (a Service briefly gone) is an outage, not a bug.
    app.add_exception_handler(socket.gaierror, _database_unavailable)
    app.add_exception_handler(DBAPIError, _dbapi_error)
