"""OpenTelemetry spans for the life of each instance, from receipt to upload confirmed.

Spans are built with explicit start and end times taken from the state rows (received_at,
spooled_at) and the uploader's clock, so one upload batch of one series becomes one trace:

    series                      first receipt -> last upload end
      instance (per instance)   received_at -> upload end
        spool                   received_at -> spooled_at   (C-STORE to durable file)
        wait                    spooled_at  -> dispatched   (acquisition delay, reap, window)
        upload                  upload start -> upload end

The `series` span is opened when the batch is dispatched (`begin_series`, its start set back
to the first receipt) and is the current span while the batch uploads: destinations carry its
`traceparent` on their requests, so the control plane's spans for the upload (and for the
series' figures, sent over the link with the same `traceparent`) join this trace. The
instances and their phases are added when the batch ends (`finish_series`).

Attributes go through `common.telemetry.safe_attributes` and never hold a UID or a patient
value: the series is named by `common.logging.series_key`, a short hash.

Must not import pynetdicom, fastapi or control_plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from common.logging import series_key
from common.telemetry import safe_attributes

TRACER_NAME = "dicom_connector.agent"


@dataclass(frozen=True, slots=True)
class InstanceTiming:
    """What happened to one instance in one upload batch (epoch seconds throughout)."""

    size: int
    attempt: int
    received_at: float
    spooled_at: float
    dispatched_at: float
    upload_started_at: float
    upload_ended_at: float
    status: str  # "uploaded", "retry" or "failed"


class PipelineTracer:
    """Records upload batches as traces on a tracer provider (the global one by default)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._tracer: Tracer = (
            provider.get_tracer(TRACER_NAME) if provider else trace.get_tracer(TRACER_NAME)
        )

    def record_batch(self, series_instance_uid: str, timings: Sequence[InstanceTiming]) -> None:
        """Emit one `series` trace for a batch of instance outcomes of one series."""
        if not timings:
            return
        span = self.begin_series(series_instance_uid, min(t.received_at for t in timings))
        self.finish_series(span, series_instance_uid, timings)

    def begin_series(self, series_instance_uid: str, first_received_at: float) -> Span:
        """Open the `series` span of a batch about to upload (make it current meanwhile)."""
        return self._tracer.start_span(
            "series",
            start_time=_ns(first_received_at),
            attributes=safe_attributes(series_key=series_key(series_instance_uid)),
        )

    def finish_series(
        self, series_span: Span, series_instance_uid: str, timings: Sequence[InstanceTiming]
    ) -> None:
        """Add the batch's instances to its `series` span and end it."""
        key = series_key(series_instance_uid)
        series_span.set_attribute("count", len(timings))
        if any(timing.status != "uploaded" for timing in timings):
            series_span.set_status(Status(StatusCode.ERROR))
        parent = trace.set_span_in_context(series_span)
        for timing in timings:
            self._record_instance(timing, key, parent_context=parent)
        ended = max((timing.upload_ended_at for timing in timings), default=None)
        series_span.end(end_time=None if ended is None else _ns(ended))

    def _record_instance(
        self, timing: InstanceTiming, key: str, *, parent_context: Context
    ) -> None:
        instance_span = self._tracer.start_span(
            "instance",
            context=parent_context,
            start_time=_ns(timing.received_at),
            attributes=safe_attributes(
                series_key=key, bytes=timing.size, attempt=timing.attempt, status=timing.status
            ),
        )
        if timing.status != "uploaded":
            instance_span.set_status(Status(StatusCode.ERROR))
        context = trace.set_span_in_context(instance_span)
        phases = (
            ("spool", timing.received_at, timing.spooled_at),
            ("wait", timing.spooled_at, timing.dispatched_at),
            ("upload", timing.upload_started_at, timing.upload_ended_at),
        )
        for name, start, end in phases:
            self._child(name, context, start, end)
        instance_span.end(end_time=_ns(timing.upload_ended_at))

    def _child(self, name: str, context: Context, start: float, end: float) -> None:
        span = self._tracer.start_span(name, context=context, start_time=_ns(start))
        # Clocks of different threads can disagree by a hair; a span never ends before it starts.
        span.end(end_time=_ns(max(start, end)))


def _ns(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1_000_000_000)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, or None outside a recorded span."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span for an HTTP request; empty outside
    a recorded span."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier
