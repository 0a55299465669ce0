"""Tracing configuration and trace-context helpers (no network: exporters are only built)."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from pydantic import ValidationError

from app.kit import telemetry
from app.settings import Settings

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_no_exporter_by_default_means_no_tracing() -> None:
    settings = Settings()
    assert settings.otel_exporter == "none"
    assert telemetry.exporter_for(settings) is None
    assert telemetry.setup(settings) is None
    assert telemetry.current_traceparent() is None
    assert telemetry.current_trace_id() is None


def test_console_and_otlp_exporters_follow_the_settings() -> None:
    assert isinstance(
        telemetry.exporter_for(Settings(otel_exporter="console")), ConsoleSpanExporter
    )
    otlp = telemetry.exporter_for(
        Settings(otel_exporter="otlp", otel_endpoint="http://127.0.0.1:14318/v1/traces")
    )
    assert isinstance(otlp, OTLPSpanExporter)
    assert otlp._endpoint == "http://127.0.0.1:14318/v1/traces"


@pytest.mark.parametrize("bad", [{"otel_exporter": "jaeger"}, {"otel_sample_ratio": 1.5}])
def test_invalid_tracing_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate(bad)


def test_links_come_only_from_well_formed_trace_contexts() -> None:
    (link,) = telemetry.links_to(VALID)
    assert format(link.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(link.context.span_id, "016x") == "b7ad6b7169203331"
    for malformed in (None, 42, "", "not-a-traceparent", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        assert telemetry.links_to(malformed) == []


def test_the_active_span_is_what_travels() -> None:
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("work") as span:
        traceparent = telemetry.current_traceparent()
        trace_id = telemetry.current_trace_id()
    context = span.get_span_context()
    assert trace_id == format(context.trace_id, "032x")
    assert traceparent is not None
    version, traced, parent, flags = traceparent.split("-")
    assert (version, traced, parent) == ("00", trace_id, f"{context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
    assert telemetry.current_traceparent() is None
