"""Uploading to the built-in store over real HTTP, and how each answer is booked in the state.

The store is `StoreDouble` (a test double of the control plane's ingest contract, served by
uvicorn on 127.0.0.1); see test_upload_store_double.py.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.health import PipelineCounters
from agent.spool import Spool
from agent.state import AgentState, InstanceRow, InstanceState
from agent.upload.base import UploadError, UploadResult
from agent.upload.builtin_store import CHUNK_SIZE, BuiltinStoreDestination
from agent.uploader import UploadBatch, Uploader
from common.config import RoutingConfig
from common.hierarchy import HierarchyTarget
from common.routing import RoutingReason
from tests.agent.test_reaper import T0, series_datasets, spool_datasets
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble
from tests.support.dicom_factory import make_series
from tests.support.environment import free_port

ROUTING = RoutingConfig()
TARGET = HierarchyTarget(
    group="neuro",
    project="study-a",
    subject="SUBJ7",
    session="visit-1",
    acquisition="T1 MPRAGE",
    acquisition_key="1.2.3.4",
    routing_reason=RoutingReason.routed,
    routing_string="fw://neuro/study-a/SUBJ7/visit-1",
)


@pytest.fixture
def store() -> Iterator[StoreDouble]:
    double = StoreDouble()
    double.start()
    yield double
    double.stop()


@pytest.fixture
async def destination(store: StoreDouble) -> AsyncIterator[BuiltinStoreDestination]:
    built = BuiltinStoreDestination(store.base_url, AGENT_TOKEN, retry_wait_initial=0.01)
    yield built
    await built.aclose()


def spooled(state: AgentState, spool: Spool, n: int = 1) -> list[InstanceRow]:
    datasets = series_datasets(n, comments="fw://neuro/study-a")
    spool_datasets(spool, datasets, T0)
    return state.spooled_instances(datasets[0].SeriesInstanceUID)


def batch_of(rows: list[InstanceRow]) -> UploadBatch:
    return UploadBatch(rows[0].series_instance_uid, TARGET, tuple(rows), T0 + 50)


def uploader(state: AgentState, destination: BuiltinStoreDestination) -> Uploader:
    return Uploader(
        state,
        destination,
        concurrency=2,
        counters=PipelineCounters(),
        clock=lambda: T0 + 60,
        rng=random.Random(7),
    )


async def test_upload_sends_the_spooled_bytes_with_the_ingest_parameters(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    [row] = spooled(state, spool)

    result = await destination.upload(row, TARGET, ROUTING)

    assert result.status == "created"
    stored = store.file_of(row.sop_instance_uid)
    assert stored is not None
    assert stored.file_id == result.file_id
    assert stored.data == row.path.read_bytes()
    assert stored.params == {
        "group": "neuro",
        "project": "study-a",
        "subject": "SUBJ7",
        "session": "visit-1",
        "acquisition": "T1 MPRAGE",
        "acquisition_key": "1.2.3.4",
        "series_instance_uid": row.series_instance_uid,
        "study_instance_uid": row.study_instance_uid,
        "sop_instance_uid": row.sop_instance_uid,
        "sha256": row.sha256,
        "routing_reason": "routed",
        "routing_string": "fw://neuro/study-a/SUBJ7/visit-1",
        "unknown_group": "unknown",
        "unsorted_project": "Unsorted",
    }


async def test_upload_streams_a_file_larger_than_one_chunk(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    big = make_series(
        1,
        patient_id="SYNTH002",
        study_uid="1.2.826.0.1.3680043.8.498.2",
        series_uid="1.2.826.0.1.3680043.8.498.2.1",
        series_description="big",
        study_description="Brain",
        rows=1200,
        cols=1300,
    )
    spool_datasets(spool, big, T0)
    [row] = state.spooled_instances("1.2.826.0.1.3680043.8.498.2.1")
    assert row.size > 2 * CHUNK_SIZE

    await destination.upload(row, TARGET, ROUTING)

    stored = store.file_of(row.sop_instance_uid)
    assert stored is not None
    assert hashlib.sha256(stored.data).hexdigest() == row.sha256


async def test_store_answering_503_twice_then_200_uploads_the_instance_once(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    [row] = spooled(state, spool)
    store.fail_next.extend([503, 503])

    report = await uploader(state, destination).upload_batch(batch_of([row]), ROUTING)

    assert (report.uploaded, report.retrying, report.failed) == (1, 0, 0)
    assert store.ingest_statuses == [503, 503, 200]
    assert len(store.files) == 1
    assert state.instance(row.id).state is InstanceState.uploaded
    assert not row.path.exists()


async def test_store_answering_400_marks_the_instance_failed_with_the_message(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    [row] = spooled(state, spool)
    store.fail_next.append(400)

    report = await uploader(state, destination).upload_batch(batch_of([row]), ROUTING)

    assert report.failed == 1
    failed = state.instance(row.id)
    assert failed.state is InstanceState.failed
    assert failed.last_error == "store answered HTTP 400: scripted failure"
    assert store.ingest_statuses == [400]
    assert row.path.exists()


async def test_store_down_schedules_a_durable_retry_and_keeps_the_file(
    state: AgentState, spool: Spool, tmp_path: Path
) -> None:
    [row] = spooled(state, spool)
    down = BuiltinStoreDestination(
        f"http://127.0.0.1:{free_port()}", AGENT_TOKEN, retry_wait_initial=0.01
    )
    counters = PipelineCounters()
    try:
        report = await Uploader(
            state, down, concurrency=1, counters=counters, clock=lambda: T0 + 60
        ).upload_batch(batch_of([row]), ROUTING)
    finally:
        await down.aclose()

    assert report.retrying == 1
    assert row.path.exists()
    state.close()
    reopened = AgentState.open(tmp_path / "state.db")
    try:
        waiting = reopened.instance(row.id)
        assert waiting.state is InstanceState.spooled
        assert waiting.attempts == 1
        assert waiting.next_attempt_at is not None
        assert T0 + 60 <= waiting.next_attempt_at <= T0 + 61
        assert waiting.last_error is not None
        assert "ConnectError" in waiting.last_error
        due_at = waiting.next_attempt_at
        assert reopened.spooled_instances(row.series_instance_uid, now=due_at - 0.001) == []
        assert reopened.spooled_instances(row.series_instance_uid, now=due_at) == [waiting]
        assert counters.retries_scheduled == 1
        assert counters.last_error == waiting.last_error
    finally:
        reopened.close()


async def test_a_target_the_store_would_refuse_fails_before_sending_without_its_values(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    [row] = spooled(state, spool)
    leaky = HierarchyTarget(
        group=None,
        project=None,
        subject="",
        session="SECRET-SESSION",
        acquisition="SECRET-ACQUISITION",
        acquisition_key="k",
        routing_reason=RoutingReason.no_routing_string,
        routing_string=None,
    )

    with pytest.raises(UploadError) as raised:
        await destination.upload(row, leaky, ROUTING)

    assert not raised.value.retryable
    assert "subject: Value error, the label is empty" in raised.value.message
    assert store.ingest_statuses == []  # the same contract model refused it on the agent
    assert "SECRET" not in raised.value.message
    assert row.sop_instance_uid not in raised.value.message


async def test_session_metadata_travels_as_one_json_query_parameter(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    rows = spooled(state, spool, 2)
    with_metadata = replace(TARGET, metadata={"protocol": "BRAIN", "visit": "V2"})

    outcomes = await destination.upload_batch(rows, with_metadata, ROUTING)

    assert [type(outcome) for outcome in outcomes] == [UploadResult, UploadResult]
    stored = store.file_of(rows[0].sop_instance_uid)
    assert stored is not None
    assert json.loads(stored.params["metadata"]) == {"protocol": "BRAIN", "visit": "V2"}


async def test_metadata_the_store_would_refuse_fails_before_sending_without_its_value(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    [row] = spooled(state, spool)
    leaky = replace(TARGET, metadata={"protocol": "SECRET\x07VALUE"})

    with pytest.raises(UploadError) as raised:
        await destination.upload(row, leaky, ROUTING)

    assert not raised.value.retryable
    assert "metadata entry 1: the value holds a control" in raised.value.message
    assert "SECRET" not in raised.value.message
    assert store.ingest_statuses == []
