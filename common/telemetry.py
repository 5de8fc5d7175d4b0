"""Tracing setup and the allowlist filter for span attributes.

`configure_tracing` builds a `TracerProvider` for one service; it does not install it
globally, so each process (and each test) decides what to do with it. `safe_attributes` keeps
only attributes named in `common.phi.SAFE_KEYS`: nothing that identifies a patient goes into
a trace. Every exporter `configure_tracing` sets up is wrapped in `AllowlistExporter`, which
drops, at export, any attribute outside those keys and a few PHI-free semantic conventions
(HTTP method, route template, status; database operation), so spans made by libraries (the
FastAPI request spans carry the URL path and query, which may name a subject) are safe too.
Imports opentelemetry, structlog, stdlib and `common` only: never web, database or DICOM
libraries.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence

import structlog
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.util.types import AttributeValue

from common.phi import SAFE_KEYS

__all__ = [
    "EXPORTED_ATTRIBUTES",
    "SAFE_SPAN_ATTRIBUTES",
    "AllowlistExporter",
    "configure_tracing",
    "safe_attributes",
]

SAFE_SPAN_ATTRIBUTES: frozenset[str] = SAFE_KEYS
# Semantic-convention attributes of library spans that never hold a request's values: the
# route *template*, not the path; the operation, not the statement.
EXPORTED_ATTRIBUTES: frozenset[str] = SAFE_KEYS | frozenset(
    {
        "http.request.method",
        "http.route",
        "http.response.status_code",
        "url.scheme",
        "server.port",
        "network.protocol.version",
        "error.type",
        "db.system.name",
        "db.operation.name",
        "exception.type",
    }
)
_OTLP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"

log = structlog.get_logger(__name__)


def configure_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Build a tracer provider for ``service_name``.

    Spans go to ``exporter`` when one is given (synchronously, so tests see them at once).
    Otherwise, when the environment sets ``OTEL_EXPORTER_OTLP_ENDPOINT``, they go in batches
    to the OTLP/HTTP exporter if its package (opentelemetry-exporter-otlp-proto-http) is
    installed; if it is not, a warning says so and spans are not exported. With neither, spans
    are created (so code can trace unconditionally) but not exported.

    The provider is not installed globally: pass it to instrumentations, or call
    ``opentelemetry.trace.set_tracer_provider`` once at process start.
    """
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(AllowlistExporter(exporter)))
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        otlp = _otlp_exporter()
        if otlp is not None:
            provider.add_span_processor(BatchSpanProcessor(AllowlistExporter(otlp)))
    return provider


class AllowlistExporter(SpanExporter):
    """Exports spans through `inner` with only `EXPORTED_ATTRIBUTES` on spans and events."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export filtered copies of `spans`."""
        return self._inner.export([_filtered(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the inner exporter down."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the inner exporter."""
        return self._inner.force_flush(timeout_millis)


def _allowed(attributes: Mapping[str, AttributeValue] | None) -> dict[str, AttributeValue]:
    return {key: value for key, value in (attributes or {}).items() if key in EXPORTED_ATTRIBUTES}


def _filtered(span: ReadableSpan) -> ReadableSpan:
    # Exception events carry the message and stack trace, which may quote a value: only
    # their type survives (and the status description is dropped for the same reason).
    events = [
        Event(event.name, _allowed(event.attributes), event.timestamp) for event in span.events
    ]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_allowed(span.attributes),
        events=events,
        links=span.links,
        kind=span.kind,
        instrumentation_scope=span.instrumentation_scope,
        status=span.status.__class__(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
    )


def _otlp_exporter() -> SpanExporter | None:
    try:
        module = importlib.import_module(_OTLP_MODULE)
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http "
            "is not installed; traces are not exported",
            reason="otlp_exporter_missing",
        )
        return None
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter


def safe_attributes(**attrs: AttributeValue | None) -> dict[str, AttributeValue]:
    """The span attributes among ``attrs`` that are allowlisted and set.

    Keys outside `SAFE_SPAN_ATTRIBUTES` are dropped, whatever their value, and so are None
    values (OpenTelemetry refuses them). Use ``series_key=series_key(uid)`` rather than a UID.
    """
    return {
        key: value
        for key, value in attrs.items()
        if key in SAFE_SPAN_ATTRIBUTES and value is not None
    }
