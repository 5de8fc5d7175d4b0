"""A stand-in for an OpenTelemetry collector: OTLP/HTTP (protobuf) on 127.0.0.1, port 0.

It accepts `POST /v1/traces` as a collector does, decodes each `ExportTraceServiceRequest` with
the OTLP protobuf definitions and keeps every span (service, name, ids, attributes) for the
test to look at.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.served import served


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector received it; ids in lowercase hex."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


class Collector:
    """The spans received so far."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.endpoint = ""

    def app(self) -> FastAPI:
        """The ASGI app of the stand-in."""
        app = FastAPI()

        @app.post("/v1/traces")
        async def traces(request: Request) -> Response:
            message = ExportTraceServiceRequest()
            message.ParseFromString(await request.body())
            received = []
            for resource_spans in message.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        received.append(
                            ReceivedSpan(
                                service=str(resource.get("service.name")),
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                attributes={a.key: _value(a.value) for a in span.attributes},
                            )
                        )
            with self._lock:
                self.spans.extend(received)
            return Response(
                ExportTraceServiceResponse().SerializeToString(),
                media_type="application/x-protobuf",
            )

        return app

    def snapshot(self) -> list[ReceivedSpan]:
        """A copy of the spans received so far."""
        with self._lock:
            return list(self.spans)


@contextmanager
def otlp_collector() -> Iterator[Collector]:
    """A running stand-in; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT should say."""
    collector = Collector()
    with served(collector.app()) as port:
        collector.endpoint = f"http://127.0.0.1:{port}"
        yield collector
