"""How the uploader cuts a series into chunks, how a chunk is framed, and how a chunk that
failed as a whole is booked (against the store double, which can play an unhealthy store)."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from agent.health import PipelineCounters
from agent.spool import Spool
from agent.state import AgentState, InstanceRow, InstanceState
from agent.upload.base import BatchLimits, UploadError, UploadResult
from agent.upload.builtin_store import BuiltinStoreDestination
from agent.upload.multipart import RelatedBody, SpooledPart
from agent.uploader import UploadBatch, Uploader, split_into_chunks
from common.config import RoutingConfig
from common.hierarchy import HierarchyTarget
from tests.agent.test_reaper import T0, series_datasets, spool_datasets
from tests.agent.test_upload_builtin_store import TARGET
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble

ROUTING = RoutingConfig()


def _row(index: int, size: int = 100) -> InstanceRow:
    return InstanceRow(
        id=index,
        sop_instance_uid=f"1.2.3.{index}",
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
        sha256="0" * 64,
        size=size,
        path=Path(f"/nonexistent/{index}"),
        received_at=T0,
        spooled_at=T0,
        state=InstanceState.spooled,
        attempts=0,
        next_attempt_at=None,
        last_error=None,
    )


def _sizes(chunks: list[tuple[InstanceRow, ...]]) -> list[int]:
    return [len(chunk) for chunk in chunks]


@pytest.mark.parametrize(
    ("count", "expected"),
    [(1, [1]), (64, [64]), (65, [33, 32]), (200, [50, 50, 50, 50]), (130, [44, 43, 43])],
)
def test_a_series_is_cut_into_as_few_chunks_as_the_cap_allows_of_even_counts(
    count: int, expected: list[int]
) -> None:
    rows = [_row(index) for index in range(count)]

    chunks = split_into_chunks(rows, BatchLimits(max_instances=64, max_bytes=1 << 30))

    assert _sizes(chunks) == expected
    assert [row for chunk in chunks for row in chunk] == rows


def test_a_chunk_closes_before_the_byte_cap_and_an_oversized_instance_travels_alone() -> None:
    rows = [_row(0, 400), _row(1, 400), _row(2, 400), _row(3, 5000), _row(4, 100)]

    chunks = split_into_chunks(rows, BatchLimits(max_instances=64, max_bytes=1000))

    assert [[row.id for row in chunk] for chunk in chunks] == [[0, 1], [2], [3], [4]]


def test_no_instances_make_no_chunks() -> None:
    assert split_into_chunks([], BatchLimits(max_instances=4, max_bytes=10)) == []


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


def _spooled(state: AgentState, spool: Spool, n: int) -> list[InstanceRow]:
    datasets = series_datasets(n, comments="fw://neuro/study-a")
    spool_datasets(spool, datasets, T0)
    return state.spooled_instances(datasets[0].SeriesInstanceUID)


def _open(rows: list[InstanceRow]) -> list[SpooledPart]:
    parts = []
    for row in rows:
        descriptor = os.open(row.path, os.O_RDONLY)
        parts.append(SpooledPart(row, descriptor, os.fstat(descriptor).st_size))
    return parts


async def test_the_body_is_as_long_as_announced_and_frames_every_file_with_its_headers(
    state: AgentState, spool: Spool
) -> None:
    rows = _spooled(state, spool, 3)
    parts = _open(rows)
    try:
        body = RelatedBody(parts)
        sent = b"".join([chunk async for chunk in body.chunks()])
    finally:
        for part in parts:
            os.close(part.descriptor)

    assert len(sent) == body.content_length
    assert body.content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    for row in rows:
        head = (
            f"\r\nContent-Type: application/dicom\r\nX-Sop-Instance-Uid: {row.sop_instance_uid}"
            f"\r\nX-Sha256: {row.sha256}\r\n\r\n"
        ).encode()
        assert head + row.path.read_bytes() + b"\r\n--" + body.boundary.encode() in sent
    assert sent.endswith(b"--" + body.boundary.encode() + b"--\r\n")


async def test_a_file_that_shrank_after_it_was_measured_stops_the_body_with_a_retryable_error(
    state: AgentState, spool: Spool
) -> None:
    [row] = _spooled(state, spool, 1)
    [part] = _open([row])
    try:
        os.truncate(row.path, row.size // 2)
        with pytest.raises(UploadError) as raised:
            async for _ in RelatedBody([part]).chunks():
                pass
    finally:
        os.close(part.descriptor)

    assert raised.value.retryable
    assert "shrank" in raised.value.message


async def test_a_chunk_answered_5xx_every_time_schedules_a_retry_for_each_instance(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    rows = _spooled(state, spool, 3)
    store.fail_next.extend([503, 503, 503])
    uploader = Uploader(
        state,
        destination,
        concurrency=1,
        counters=PipelineCounters(),
        clock=lambda: T0 + 60,
        rng=random.Random(7),
    )

    report = await uploader.upload_batch(
        UploadBatch(rows[0].series_instance_uid, TARGET, tuple(rows), T0 + 50), ROUTING
    )

    assert (report.uploaded, report.retrying, report.failed) == (0, 3, 0)
    assert store.ingest_statuses == [503, 503, 503]
    for row in rows:
        waiting = state.instance(row.id)
        assert waiting.state is InstanceState.spooled
        assert waiting.attempts == 1
        assert waiting.last_error == "store answered HTTP 503: scripted failure"
        assert row.path.exists()


async def test_a_chunk_answered_5xx_then_200_is_sent_again_whole_and_booked_once(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    rows = _spooled(state, spool, 3)
    store.fail_next.append(502)

    outcomes = await destination.upload_batch(rows, TARGET, ROUTING)

    assert [getattr(outcome, "status", None) for outcome in outcomes] == ["created"] * 3
    assert store.ingest_statuses == [502, 200]
    assert store.batch_sizes == [3]


class _CountingDestination:
    """Passes batches on to another destination, counting the calls in flight."""

    def __init__(self, inner: BuiltinStoreDestination) -> None:
        self._inner = inner
        self.in_flight = 0
        self.most_in_flight = 0

    @property
    def batch_limits(self) -> BatchLimits:
        return self._inner.batch_limits

    async def upload_batch(
        self, instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            # Let every other chunk allowed in flight start before this one goes out.
            await asyncio.sleep(0)
            return await self._inner.upload_batch(instances, target, routing)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_chunks_of_a_series_go_as_batch_requests_within_the_concurrency(
    store: StoreDouble, state: AgentState, spool: Spool
) -> None:
    rows = _spooled(state, spool, 10)
    counting = _CountingDestination(
        BuiltinStoreDestination(
            store.base_url,
            AGENT_TOKEN,
            batch_limits=BatchLimits(max_instances=3, max_bytes=1 << 30),
        )
    )
    uploader = Uploader(state, counting, concurrency=2, counters=PipelineCounters())
    try:
        report = await uploader.upload_batch(
            UploadBatch(rows[0].series_instance_uid, TARGET, tuple(rows), T0 + 50), ROUTING
        )
    finally:
        await counting.aclose()

    assert report.uploaded == 10
    assert sorted(store.batch_sizes) == [2, 2, 3, 3]
    assert counting.most_in_flight == 2
