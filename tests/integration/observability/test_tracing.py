"""Spans (in-memory exporter): a booking's route and SQL spans, and the worker's spans linked back
to the request through the trace context stored in the outbox payload."""

from __future__ import annotations

from datetime import time
from typing import Any

from arq.connections import ArqRedis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from sqlalchemy import text

from app.kit import telemetry
from app.kit.db import Database
from app.models import Role
from app.settings import Settings
from tests.fixtures.app import Accounts, client_for, running_app
from tests.fixtures.booking import Booking, local_instant, next_local_day
from tests.fixtures.observability import Spans, json_logs
from tests.fixtures.worker import run_worker_until_idle


def attribute(span: ReadableSpan, *names: str) -> Any:
    attributes = span.attributes or {}
    return next((attributes[name] for name in names if name in attributes), None)


def statement(span: ReadableSpan) -> str:
    return str(attribute(span, "db.statement", "db.query.text") or "")


async def test_a_booking_traces_its_route_and_sql_and_the_outbox_job_links_back(
    spans: Spans, settings: Settings, database: Database, queue: ArqRedis
) -> None:
    async with running_app(settings) as app, client_for(app) as client:
        accounts = Accounts(app, client)
        booking = Booking(app, client, accounts)
        provider = await booking.provider()
        patient = await accounts.create(Role.PATIENT)
        start = local_instant(next_local_day(provider.timezone), time(11, 0), provider.timezone)
        spans.exporter.clear()
        with json_logs() as logs:
            response = await booking.book(patient, provider, start)
        assert response.status_code == 201, response.text
        request_spans = spans.finished
        async with database.reading() as session:
            payload = await session.scalar(
                text("SELECT payload FROM outbox WHERE topic = 'appointment.booked'")
            )
        await run_worker_until_idle(settings, queue, relay=True)

    (route,) = [
        span
        for span in request_spans
        if span.kind == SpanKind.SERVER and attribute(span, "http.route") == "/v1/appointments"
    ]
    assert route.name == "POST /v1/appointments"
    trace_id = route.context.trace_id
    in_request = {
        span.context.span_id: span for span in request_spans if span.context.trace_id == trace_id
    }
    sql = [span for span in in_request.values() if statement(span)]
    assert any("INSERT INTO appointments" in statement(span) for span in sql)
    assert any("FOR NO KEY UPDATE" in statement(span) for span in sql)  # the provider lock
    assert any("INSERT INTO outbox" in statement(span) for span in sql)
    for span in sql:
        assert span.kind == SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id in in_request

    # The access log line of the request names its trace.
    (access,) = logs.where(logger="carebook.access", request_id=response.headers["x-request-id"])
    assert access["trace_id"] == format(trace_id, "032x")

    # The stored event carries the request's trace context...
    emitted_by = payload[telemetry.TRACE_KEY]
    assert emitted_by.split("-")[1] == format(trace_id, "032x")
    # ...and the worker's span for the event links to the span that emitted it.
    (handled,) = spans.named("outbox appointment.booked")
    (link,) = handled.links
    assert link.context.trace_id == trace_id
    assert link.context.span_id in in_request
    assert handled.context.trace_id != trace_id  # its own trace, linked, not a child
    (job,) = [
        span
        for span in spans.named("job handle_event")
        if handled.parent is not None and span.context.span_id == handled.parent.span_id
    ]
    assert job.kind == SpanKind.CONSUMER
    # The handler's own SQL is inside the event's span.
    assert any(
        "UPDATE outbox SET processed_at" in statement(span)
        and span.context.trace_id == handled.context.trace_id
        for span in spans.finished
    )
    # Effect jobs it planned (the video room, the patient's message) link to the event's span.
    effects = [
        span
        for span in spans.finished
        if span.name in {"job sync_video_room", "job deliver_notification"}
    ]
    assert effects
    for effect in effects:
        assert [linked.context.span_id for linked in effect.links] == [handled.context.span_id]


async def test_without_tracing_nothing_is_recorded_and_no_trace_is_stored(
    settings: Settings, database: Database, booking: Booking, accounts: Accounts
) -> None:
    provider = await booking.provider()
    patient = await accounts.create(Role.PATIENT)
    start = local_instant(next_local_day(provider.timezone), time(12, 0), provider.timezone)
    assert telemetry.setup(settings) is None  # the default exporter is "none"

    assert (await booking.book(patient, provider, start)).status_code == 201

    async with database.reading() as session:
        payload = await session.scalar(
            text("SELECT payload FROM outbox WHERE topic = 'appointment.booked'")
        )
    assert telemetry.TRACE_KEY not in payload
