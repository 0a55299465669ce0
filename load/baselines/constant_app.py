"""The floor of the stack: FastAPI and uvicorn returning a constant JSON document.

The body has the shape and roughly the size of one provider's 7-day availability (98 slots,
about 7 KB: the mean body of the availability scenarios on the scale dataset), serialized
once at import. Nothing else runs per request: no middleware, no
database, no Redis. The load runner serves it with exactly Carebook's uvicorn command line
(`--loop uvloop --http httptools --no-access-log --no-server-header`, the same worker count),
so the gap between the two is what Carebook's own work costs.
`python -m load.baselines.constant_app` serves it with the settings of `carebook serve`
(log_config=None, access log off, no server header).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from load.client import LOOPBACK, require_loopback

PATH = "/v1/constant"
SLOTS_PER_DAY = 14
DAYS = 7


def constant_document(days: int = DAYS, slots_per_day: int = SLOTS_PER_DAY) -> bytes:
    """An availability-shaped JSON document: `days` x `slots_per_day` half-hour slots."""
    first = datetime.fromisoformat("2026-11-23T09:00:00+00:00")
    slots = []
    for day in range(days):
        for index in range(slots_per_day):
            start = first + timedelta(days=day, minutes=30 * index)
            end = start + timedelta(minutes=30)
            slots.append({"start": start.isoformat(), "end": end.isoformat()})
    document = {
        "provider_id": "0195f0c2-7a3e-7c1d-9a52-4b6e2f1d8c30",
        "timezone": "Europe/London",
        "slot_minutes": 30,
        "slots": slots,
    }
    return orjson.dumps(document)


BODY = constant_document()
_READY = orjson.dumps({"status": "ok", "database": "n/a", "redis": "n/a"})


def create_app() -> FastAPI:
    """The constant-JSON app: the endpoint, and a readiness probe the runner waits for."""
    app = FastAPI(title="constant JSON baseline")

    @app.get(PATH)
    async def constant() -> Response:
        return Response(BODY, media_type="application/json")

    @app.get("/health/ready")
    async def ready() -> Response:
        return Response(_READY, media_type="application/json")

    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory load.baselines.constant_app:app_factory`."""
    return create_app()


def main() -> None:
    """Serve the baseline on 127.0.0.1 with the uvicorn settings of `carebook serve`."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "load.baselines.constant_app:app_factory",
        factory=True,
        host=require_loopback(LOOPBACK),
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
