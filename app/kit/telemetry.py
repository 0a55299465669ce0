"""Tracing with OpenTelemetry: one tracer provider per process, chosen by settings.

`CAREBOOK_OTEL_EXPORTER` is `none` (the default: no provider, nothing instrumented, no
overhead), `console` (spans as JSON on stdout) or `otlp` (OTLP over HTTP to
`CAREBOOK_OTEL_ENDPOINT`). With a provider, the FastAPI app, both SQLAlchemy engines, the httpx
clients of the third parties and the Redis clients are instrumented object by object (never by
patching libraries globally), each with this module's provider.

Work caused by a request carries its trace across the queue: `outbox.emit` stores the current
span context as a W3C `traceparent` in the event payload (`TRACE_KEY`), and the worker's spans
for that event, and for the effect jobs it enqueues, link back to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.settings import Settings

logger = logging.getLogger("carebook.telemetry")

# The reserved payload key under which an outbox event carries the trace that caused it.
TRACE_KEY = "_trace"
# The keyword argument under which a job gets the `traceparent` of what enqueued it.
JOB_TRACE_KWARG = "traceparent"
TRACER_NAME = "carebook"

_provider: TracerProvider | None = None
_propagator = TraceContextTextMapPropagator()


def setup(settings: Settings, *, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """This process's tracer provider, created on the first call; None when tracing is off.

    `exporter` (tests: an `InMemorySpanExporter`) overrides the settings and exports each span
    as it ends; the configured exporters batch.
    """
    global _provider
    if _provider is not None:
        return _provider
    if exporter is not None:
        processor: SimpleSpanProcessor | BatchSpanProcessor = SimpleSpanProcessor(exporter)
    else:
        configured = exporter_for(settings)
        if configured is None:
            return None
        processor = BatchSpanProcessor(configured)
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)),
    )
    provider.add_span_processor(processor)
    _provider = provider
    if exporter is None:
        # Libraries that ask the global API get the same provider.
        trace.set_tracer_provider(provider)
    logger.info("tracing enabled", extra={"exporter": settings.otel_exporter})
    return provider


def exporter_for(settings: Settings) -> SpanExporter | None:
    """The exporter `CAREBOOK_OTEL_EXPORTER` names (None for `none`)."""
    if settings.otel_exporter == "console":
        return ConsoleSpanExporter()
    if settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=settings.otel_endpoint)
    return None


def shutdown() -> None:
    """Flush and forget the provider (process exit; tests between traced apps)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
    _provider = None


def tracing() -> bool:
    """Whether spans are recorded (then every statement must go through SQLAlchemy)."""
    return _provider is not None


def tracer() -> trace.Tracer:
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer(TRACER_NAME)


def instrument_app(app: FastAPI) -> None:
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        meter_provider=NoOpMeterProvider(),  # metrics are Prometheus's
        # Signed file links carry their credential and the record's name in the query string.
        excluded_urls="/health/,/metrics,/v1/files/",
        exclude_spans=["receive", "send"],
    )


def instrument_engine(engine: AsyncEngine) -> None:
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    counter = NoOpMeterProvider().get_meter(TRACER_NAME).create_up_down_counter("unused")
    # Spans carry the SQL text only, never the parameters.
    EngineTracer(  # type: ignore[no-untyped-call]
        _provider.get_tracer("opentelemetry.instrumentation.sqlalchemy"),
        engine.sync_engine,
        counter,
    )


def instrument_httpx(client: httpx.AsyncClient) -> None:
    if _provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(
        client, tracer_provider=_provider, meter_provider=NoOpMeterProvider()
    )


def instrument_redis(client: Redis) -> None:
    """Spans of Redis commands (their arguments are replaced by `?`)."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=_provider)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the active span, or None when no sampled span is active."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def links_to(traceparent: object) -> list[Link]:
    """A link to the span a `traceparent` names; none when it is missing or malformed."""
    if not isinstance(traceparent, str):
        return []
    context = trace.get_current_span(_propagator.extract({"traceparent": traceparent}))
    span_context = context.get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


@contextmanager
def job_span(
    name: str, *, cause: object = None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A consumer span for a job run; `cause` is the `traceparent` of what enqueued it."""
    with tracer().start_as_current_span(
        name, kind=SpanKind.CONSUMER, links=links_to(cause), attributes=attributes
    ) as span:
        yield span


def current_trace_id() -> str | None:
    """The active span's trace id in hex (for log lines), or None."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
