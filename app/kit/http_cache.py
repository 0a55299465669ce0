"""Conditional GETs: strong ETags over the response body, `If-None-Match` -> 304."""

from __future__ import annotations

import hashlib

from fastapi import Request
from fastapi.responses import Response

PUBLIC_SHORT = "public, max-age=60"
# Public but changes with every booking: clients and proxies revalidate (cheap 304s).
PUBLIC_REVALIDATE = "public, no-cache"


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # If-None-Match uses the weak comparison: W/"x" matches "x".
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in candidates


def conditional_bytes(
    request: Request, body: bytes, *, cache_control: str, etag: str | None = None
) -> Response:
    """Ready JSON bytes (e.g. from the cache) with a strong ETag, or 304. `etag`, when given,
    must be `etag_of(body)` computed earlier (see `with_etag`)."""
    return _conditional(request.headers.get("if-none-match"), body, cache_control, etag)


def _conditional(
    if_none_match: str | None, body: bytes, cache_control: str, etag: str | None
) -> Response:
    etag = etag or etag_of(body)
    headers = {"ETag": etag, "Cache-Control": cache_control, "Vary": "Accept-Encoding"}
    if _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def with_etag(body: bytes) -> bytes:
    """The body behind its ETag and a newline: a form to cache, so a hit hashes nothing."""
    return etag_of(body).encode() + b"\n" + body


def conditional_with_etag(request: Request, stored: bytes, *, cache_control: str) -> Response:
    """`conditional_bytes` for a value made by `with_etag`."""
    return conditional_stored(request.headers.get("if-none-match"), stored, cache_control)


def conditional_stored(if_none_match: str | None, stored: bytes, cache_control: str) -> Response:
    """`conditional_with_etag` from the request's `If-None-Match` alone (no Request object)."""
    etag, _, body = stored.partition(b"\n")
    return _conditional(if_none_match, body, cache_control, etag.decode())
