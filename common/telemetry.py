"""Tracing setup and the allowlist filter for span attributes.

`configure_tracing` builds a `TracerProvider` for one service; it does not install it
globally, so each process (and each test) decides what to do with it. `safe_attributes` keeps
only attributes named in `common.phi.SAFE_KEYS`: nothing that identifies a patient goes into
a trace. Imports opentelemetry, structlog, stdlib and `common` only: never web, database or
DICOM libraries.
"""

from __future__ import annotations

import importlib
import os

import structlog
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.util.types import AttributeValue

from common.phi import SAFE_KEYS

__all__ = ["SAFE_SPAN_ATTRIBUTES", "configure_tracing", "safe_attributes"]

SAFE_SPAN_ATTRIBUTES: frozenset[str] = SAFE_KEYS
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
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        otlp = _otlp_exporter()
        if otlp is not None:
            provider.add_span_processor(BatchSpanProcessor(otlp))
    return provider


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
