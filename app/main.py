"""The application factory: middleware, routers and the lifespan that owns every connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from app import invalidation
from app.analytics.endpoints import router as analytics_router
from app.appointments.endpoints import router as appointments_router
from app.audit.endpoints import router as audit_router
from app.auth.endpoints import router as auth_router
from app.auth.login_limits import DeviceTokens
from app.auth.principals import USER_TOPICS, PrincipalCache
from app.availability.endpoints import router as availability_router
from app.availability.shortcut import AvailabilityShortcut
from app.catalog.endpoints import router as catalog_router
from app.health.endpoints import router as health_router
from app.health.metrics import OutboxCollector
from app.health.metrics import router as metrics_router
from app.integrations.fcm import Fcm
from app.integrations.storage import FILES_PREFIX, create_storage
from app.integrations.videosdk import VideoSdk
from app.kit import telemetry
from app.kit.cache import Cache
from app.kit.db import Database
from app.kit.docs import install_docs
from app.kit.errors import install_error_handlers
from app.kit.events import EventBus
from app.kit.logging import configure_logging
from app.kit.metrics import mark_process_dead
from app.kit.middleware import RequestContextMiddleware
from app.kit.rate_limit import Policies, RateLimiter
from app.kit.redis import create_redis
from app.kit.security import Passwords, Tokens
from app.notifications.endpoints import router as notifications_router
from app.records.endpoints import router as records_router
from app.schedules.endpoints import router as schedules_router
from app.settings import Settings, get_settings
from app.video.endpoints import router as video_router

logger = logging.getLogger("carebook")


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.database_url is None:
            raise RuntimeError(
                "CAREBOOK_DATABASE_URL is not set; start Carebook with `carebook serve`, "
                "which provides an embedded database when no URL is configured."
            )
        app.state.settings = settings
        app.state.redis = create_redis(settings.redis_url, settings) if settings.redis_url else None
        app.state.cache = Cache(
            app.state.redis if settings.cache_enabled else None,
            staleness=invalidation.STALENESS,
        )
        app.state.rate_limiter = RateLimiter(
            app.state.redis,
            app.state.cache.circuit,  # one Redis, one view of whether it is reachable
            Policies.from_settings(settings),
            enabled=settings.rate_limit_enabled,
        )
        events = EventBus()
        for topic in invalidation.TOPICS:
            events.subscribe(topic, app.state.cache.on_events)
        app.state.database = Database.connect(settings, settings.database_url, events=events)
        # Cached availability answered before FastAPI's routing (RequestContextMiddleware).
        app.state.shortcuts = (AvailabilityShortcut(),)
        app.state.principals = PrincipalCache(
            app.state.database.primary, ttl_seconds=settings.principal_cache_seconds
        )
        events.subscribe(USER_TOPICS, app.state.principals.on_events)
        app.state.outbox_metrics = OutboxCollector()
        app.state.passwords = Passwords(settings)
        app.state.tokens = Tokens(settings)
        app.state.device_tokens = DeviceTokens(settings)  # login limits' known devices
        # The API never calls VideoSDK or FCM on a request (the worker does); it holds the
        # adapters for their configuration: join URLs and what /health/ready reports.
        app.state.videosdk = VideoSdk(settings)
        app.state.fcm = Fcm(settings)
        app.state.storage = create_storage(settings)  # records' files (signing only, no I/O)
        worker_task: asyncio.Task[None] | None = None
        if settings.run_worker_in_process:
            from workers.runner import run_worker

            worker_task = asyncio.create_task(run_worker(settings), name="carebook-worker")
        try:
            yield
        finally:
            if worker_task is not None:
                worker_task.cancel()
                try:
                    await worker_task
                except asyncio.CancelledError:
                    pass
                except Exception:  # the rest of the shutdown must still run
                    logger.exception("in-process worker failed")
            await app.state.videosdk.aclose()
            await app.state.fcm.aclose()
            if app.state.redis is not None:
                await app.state.redis.aclose()
            await app.state.database.dispose()
            mark_process_dead()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Carebook",
        version="0.1.0",
        summary="Appointment booking for clinics and telehealth practices.",
        lifespan=_lifespan(settings),
        # Served by install_docs instead, with a content-security policy per page.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_docs(app)
    telemetry.setup(settings)
    telemetry.instrument_app(app)  # only when tracing is on
    # One layer for the request id, Host check, body limit, per-IP limit, compression of
    # large bodies (audit F20), headers, metrics and the access log.
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        allowed_hosts=settings.allowed_hosts,
        # Record uploads are bounded by their signed size (checked by the file route).
        path_body_limits={FILES_PREFIX: max(settings.record_max_bytes, settings.max_body_bytes)},
        rate_limit=settings.rate_limit_enabled,
        gzip_minimum_size=1024,
        gzip_level=5,
    )
    app.include_router(health_router)
    for router in (
        metrics_router,
        auth_router,
        catalog_router,
        schedules_router,
        availability_router,
        appointments_router,
        video_router,
        notifications_router,
        records_router,
        audit_router,
        analytics_router,
    ):
        app.include_router(router)
    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory app.main:app_factory` (configures logging first)."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return create_app(settings)
