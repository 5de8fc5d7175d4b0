"""Tracing setup and the span-attribute allowlist."""

from __future__ import annotations

import sys

import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common.telemetry import SAFE_SPAN_ATTRIBUTES, configure_tracing, safe_attributes


def test_spans_go_to_the_exporter_given_with_the_service_name() -> None:
    exporter = InMemorySpanExporter()
    provider = configure_tracing("dicom-connector-agent", exporter)
    try:
        with provider.get_tracer("test").start_as_current_span("reap"):
            pass
        (span,) = exporter.get_finished_spans()
        assert span.name == "reap"
        assert span.resource.attributes["service.name"] == "dicom-connector-agent"
    finally:
        provider.shutdown()


def test_only_allowlisted_attributes_reach_a_span() -> None:
    exporter = InMemorySpanExporter()
    provider = configure_tracing("svc", exporter)
    attributes = safe_attributes(
        patient_id="PID-77431",
        patient_name="Doe^Jane",
        series_instance_uid="1.2.3",
        routing_string="fw://neuro/p",
        series_key="c47f5b18b8a430e6",
        instance_count=12,
        peer_ae="MR1",
    )
    try:
        with provider.get_tracer("test").start_as_current_span("store", attributes=attributes):
            pass
        (span,) = exporter.get_finished_spans()
        assert dict(span.attributes or {}) == {
            "series_key": "c47f5b18b8a430e6",
            "instance_count": 12,
            "peer_ae": "MR1",
        }
    finally:
        provider.shutdown()


def test_safe_attributes_drops_none_values() -> None:
    assert safe_attributes(site=None, count=0) == {"count": 0}


def test_the_allowlist_holds_no_patient_key() -> None:
    assert not SAFE_SPAN_ATTRIBUTES & {
        "patient_id",
        "patient_name",
        "series_instance_uid",
        "study_instance_uid",
        "sop_instance_uid",
        "routing_string",
        "study_description",
    }


def test_an_otlp_endpoint_without_the_exporter_package_warns_and_still_traces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    # A None entry makes the import fail whether or not the package is installed here.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with structlog.testing.capture_logs() as logs:
        provider = configure_tracing("svc")
    try:
        with provider.get_tracer("test").start_as_current_span("still works"):
            pass
    finally:
        provider.shutdown()
    assert [entry["reason"] for entry in logs] == ["otlp_exporter_missing"]
    assert logs[0]["log_level"] == "warning"
