"""Each upload batch becomes one trace: series → instance → spool / wait / upload, PHI-free."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.health import PipelineCounters
from agent.spool import Spool
from agent.state import AgentState
from agent.tracing import PipelineTracer
from agent.upload.builtin_store import BuiltinStoreDestination
from agent.uploader import UploadBatch, Uploader
from common.config import RoutingConfig
from common.logging import series_key
from common.phi import SAFE_KEYS
from common.telemetry import configure_tracing
from tests.agent.test_reaper import T0, series_datasets, spool_datasets
from tests.agent.test_upload_builtin_store import TARGET
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble


@pytest.fixture
def store() -> Iterator[StoreDouble]:
    double = StoreDouble()
    double.start()
    yield double
    double.stop()


@pytest.fixture
async def destination(store: StoreDouble) -> AsyncIterator[BuiltinStoreDestination]:
    built = BuiltinStoreDestination(store.base_url, AGENT_TOKEN)
    yield built
    await built.aclose()


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_a_batch_becomes_one_trace_of_nested_spans_without_dicom_values(
    state: AgentState, tmp_path: Path, destination: BuiltinStoreDestination
) -> None:
    datasets = series_datasets(2, comments="fw://neuro/study-a/SUBJ7")
    spool_datasets(Spool(tmp_path / "spool", state), datasets, T0)
    uid = datasets[0].SeriesInstanceUID
    rows = state.spooled_instances(uid)
    exporter = InMemorySpanExporter()
    ticks = itertools.count(T0 + 60)
    uploader = Uploader(
        state,
        destination,
        concurrency=1,
        counters=PipelineCounters(),
        clock=lambda: next(ticks),
        tracer=PipelineTracer(configure_tracing("agent-test", exporter=exporter)),
    )

    await uploader.upload_batch(UploadBatch(uid, TARGET, tuple(rows), T0 + 50), RoutingConfig())

    spans = exporter.get_finished_spans()
    [series] = _by_name(spans, "series")
    instances = _by_name(spans, "instance")
    assert len(instances) == 2
    assert len({span.context.trace_id for span in spans}) == 1
    assert series.parent is None
    assert all(
        s.parent is not None and s.parent.span_id == series.context.span_id for s in instances
    )
    instance_ids = {span.context.span_id for span in instances}
    for phase in ("spool", "wait", "upload"):
        children = _by_name(spans, phase)
        assert len(children) == 2
        assert all(c.parent is not None and c.parent.span_id in instance_ids for c in children)
    first = min(instances, key=lambda span: span.start_time or 0)
    first_row = rows[0]
    assert first.start_time == int(first_row.received_at * 1e9)
    [spool_span] = [
        span
        for span in _by_name(spans, "spool")
        if span.parent is not None and span.parent.span_id == first.context.span_id
    ]
    assert spool_span.end_time == int(first_row.spooled_at * 1e9)
    assert series.attributes == {"series_key": series_key(uid), "count": 2}
    assert dict(first.attributes or {}) == {
        "series_key": series_key(uid),
        "bytes": first_row.size,
        "attempt": 1,
        "status": "uploaded",
    }

    dicom_values = (
        {
            str(datasets[0][keyword].value)
            for keyword in (
                "PatientID",
                "PatientName",
                "PatientComments",
                "StudyDescription",
                "SeriesDescription",
                "StudyInstanceUID",
                "SeriesInstanceUID",
            )
        }
        | {row.sop_instance_uid for row in rows}
        | {"SUBJ7"}
    )
    for span in spans:
        attributes = dict(span.attributes or {})
        assert set(attributes) <= SAFE_KEYS
        for value in attributes.values():
            assert not any(secret in str(value) for secret in dicom_values), (span.name, value)
