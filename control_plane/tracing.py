"""Traces of the control plane: database statements as spans, and joining agents' traces.

`trace_engine` adds a span per SQL statement through SQLAlchemy's cursor events
(opentelemetry-instrumentation-sqlalchemy pins an instrumentation core that conflicts with the
SDK this project uses, and its spans would carry the statement text). A span holds the
database system and the statement's operation (SELECT, INSERT...), never the statement or its
parameters. Request spans come from FastAPI's own telemetry (`create_app`).

`remote_context` turns a W3C `traceparent` an agent sent (on an upload request or in a link
message) into a parent context, so the control plane's spans join the agent's trace.
Must not import FastAPI.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

TRACER_NAME = "dicom_connector.control_plane"
_SPAN_KEY = "_dicom_connector_span"


def trace_engine(engine: AsyncEngine, tracer: Tracer) -> None:
    """Make a client span of every statement `engine` runs."""
    sync_engine = engine.sync_engine
    system = sync_engine.dialect.name

    def before(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        span = tracer.start_span(
            f"db {operation}",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": system, "db.operation.name": operation},
        )
        if context is not None:
            setattr(context, _SPAN_KEY, span)

    def after(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        span = getattr(context, _SPAN_KEY, None)
        if span is not None:
            span.end()

    def failed(exception_context: Any) -> None:
        span = getattr(exception_context.execution_context, _SPAN_KEY, None)
        if span is not None:
            span.set_attribute("error.type", type(exception_context.original_exception).__name__)
            span.end()

    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", failed)


def remote_context(traceparent: str | None) -> Context | None:
    """The parent context a `traceparent` names; None without one."""
    if not traceparent:
        return None
    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def current_traceparent() -> str | None:
    """The `traceparent` of the current span (a request's), or None outside one."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")
