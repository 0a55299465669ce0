"""Prometheus metrics (audit F14, F18). Names follow Prometheus conventions."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

CACHE_REQUESTS = Counter(
    "carebook_cache_requests_total",
    "Response-cache lookups by cache and result (hit, miss).",
    ["cache", "result"],
)
RATE_LIMIT_REJECTIONS = Counter(
    "carebook_rate_limit_rejections_total",
    "Requests refused with 429, by policy.",
    ["policy"],
)

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(
        generate_latest(),
        media_type=CONTENT_TYPE_LATEST,
        headers={"Cache-Control": "no-store"},
    )
