"""The upload loop: working hours, acquisition delay and durable retries, on an injected clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from agent.figures import FiguresBuffer
from agent.health import PipelineCounters
from agent.reaper import Reaper
from agent.site import SiteSnapshot
from agent.spool import Spool
from agent.state import AgentState, InstanceRow
from agent.upload.base import BatchLimits, UploadError, UploadResult
from agent.upload.builtin_store import BuiltinStoreDestination
from agent.uploader import Uploader, UploadLoop
from common.config import RoutingConfig, validate_site_config
from common.hierarchy import HierarchyTarget
from tests.agent.test_reaper import series_datasets, spool_datasets
from tests.agent.test_upload_store_double import AGENT_TOKEN, StoreDouble

BERLIN = ZoneInfo("Europe/Berlin")
NOON = datetime(2024, 1, 10, 12, 0, tzinfo=BERLIN).timestamp()
EVENING = datetime(2024, 1, 10, 19, 0, tzinfo=BERLIN).timestamp()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def snapshot(working_hours: str | None = None) -> SiteSnapshot:
    timing = {"acquisition_delay": "30s", "working_hours": working_hours}
    return SiteSnapshot(
        site="default",
        revision=1,
        timezone="Europe/Berlin",
        config=validate_site_config({"timing": timing}),
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


async def wait_until(condition: Callable[[], bool], within: float = 30) -> None:
    """Poll `condition` until it holds; fail (not hang) if it never does."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {within} s")
        await asyncio.sleep(0.02)


def make_loop(
    state: AgentState,
    destination: BuiltinStoreDestination,
    clock: Clock | None,
    site: SiteSnapshot,
    counters: PipelineCounters,
) -> UploadLoop:
    now = clock or time.time
    uploader = Uploader(state, destination, concurrency=4, counters=counters, clock=now)
    return UploadLoop(
        state,
        Reaper(state, clock=now),
        uploader,
        site,
        counters=counters,
        interval=0.05,
        drain_timeout=5,
        clock=now,
    )


async def test_uploads_wait_outside_working_hours_while_reaping_goes_on(
    state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    datasets = series_datasets(3, comments="fw://neuro/study-a")
    uid = datasets[0].SeriesInstanceUID
    spool_datasets(spool, datasets, NOON - 100)
    clock, counters = Clock(NOON), PipelineCounters()
    loop = make_loop(state, destination, clock, snapshot("18:00-06:00"), counters)

    at_noon = await loop.tick()

    assert at_noon == []
    assert not loop.uploads_open(NOON)
    assert counters.deferred_instances == 3
    series = state.series(uid)
    assert series is not None
    assert series.target is not None

    clock.now = EVENING
    in_the_evening = await loop.tick()

    assert [len(batch.instances) for batch in in_the_evening] == [3]
    assert counters.deferred_instances == 0


async def test_a_series_still_receiving_is_neither_reaped_nor_uploaded(
    state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    datasets = series_datasets(2, comments=None)
    spool_datasets(spool, datasets, NOON - 10)
    loop = make_loop(state, destination, Clock(NOON), snapshot(), PipelineCounters())

    assert await loop.tick() == []
    series = state.series(datasets[0].SeriesInstanceUID)
    assert series is not None
    assert series.target is None


async def test_a_retry_waits_in_the_state_until_it_is_due(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    datasets = series_datasets(1, comments=None)
    spool_datasets(spool, datasets, NOON - 100)
    clock, counters = Clock(NOON), PipelineCounters()
    loop = make_loop(state, destination, clock, snapshot(), counters)
    uploader = Uploader(state, destination, concurrency=1, counters=counters, clock=clock)
    store.fail_next.extend([503, 503, 503])  # outlasts the short in-request retries

    [first] = await loop.tick()
    report = await uploader.upload_batch(first, loop.snapshot.config.routing)

    assert report.retrying == 1
    [row] = state.spooled_instances(datasets[0].SeriesInstanceUID)
    assert row.next_attempt_at is not None
    clock.now = row.next_attempt_at - 0.001
    assert await loop.tick() == []

    clock.now = row.next_attempt_at
    [again] = await loop.tick()
    report = await uploader.upload_batch(again, loop.snapshot.config.routing)

    assert report.uploaded == 1
    assert len(store.files) == 1
    assert state.stats().uploaded_count == 1


async def test_run_uploads_due_series_and_stop_lets_the_batch_finish(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    first = series_datasets(3, comments="fw://neuro/study-a")
    second = series_datasets(2, comments="NOFW")
    spool_datasets(spool, first + second, time.time() - 100)
    counters = PipelineCounters()
    loop = make_loop(state, destination, None, snapshot(), counters)

    running = asyncio.create_task(loop.run())
    try:
        await wait_until(lambda: counters.uploads_succeeded == 3)
    finally:
        loop.stop()
        loop.stop()
        await running

    stats = state.stats()
    assert (stats.uploaded_count, stats.skipped_count, stats.spooled_count) == (3, 2, 0)
    assert {f.group for f in store.files.values()} == {"neuro"}
    assert counters.longest_reap_seconds > 0


async def test_an_arrival_wakes_the_loop_when_the_acquisition_delay_has_passed(
    store: StoreDouble, state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    counters = PipelineCounters()
    site = SiteSnapshot(
        site="default",
        revision=1,
        timezone="UTC",
        config=validate_site_config({"timing": {"acquisition_delay": "0.1s"}}),
    )
    uploader = Uploader(state, destination, concurrency=4, counters=counters)
    # An interval far longer than the test: only the arrival's timer can wake the loop.
    loop = UploadLoop(
        state, Reaper(state), uploader, site, counters=counters, interval=3600, drain_timeout=5
    )
    running = asyncio.create_task(loop.run())
    try:
        datasets = series_datasets(2, comments=None)
        await asyncio.to_thread(spool_datasets, spool, datasets, time.time())
        loop.note_arrival(datasets[0].SeriesInstanceUID)
        await wait_until(lambda: counters.uploads_succeeded == 2)
    finally:
        loop.stop()
        await running


async def test_a_series_whose_stored_decision_is_unreadable_stays_spooled_and_is_reported(
    state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    datasets = series_datasets(1, comments=None)
    uid = datasets[0].SeriesInstanceUID
    spool_datasets(spool, datasets, NOON - 100)
    state.set_series_target(uid, {"format": 99})
    counters = PipelineCounters()
    loop = make_loop(state, destination, Clock(NOON), snapshot(), counters)

    assert await loop.tick() == []

    assert counters.last_error is not None
    assert "format 99" in counters.last_error
    assert len(state.spooled_instances(uid)) == 1


class _BrokenDestination:
    """A destination with a bug: raises something other than UploadError, quoting a value."""

    batch_limits = BatchLimits(max_instances=64, max_bytes=1 << 26)

    async def upload_batch(
        self, instances: Sequence[InstanceRow], target: HierarchyTarget, routing: RoutingConfig
    ) -> list[UploadResult | UploadError]:
        raise KeyError(f"subject {target.subject!r}")

    async def aclose(self) -> None:
        """Nothing to release."""


async def test_a_destination_bug_fails_the_instance_without_quoting_its_message(
    state: AgentState, spool: Spool
) -> None:
    datasets = series_datasets(1, comments=None)
    spool_datasets(spool, datasets, NOON - 100)
    counters = PipelineCounters()
    uploader = Uploader(state, _BrokenDestination(), concurrency=1, counters=counters)
    loop = UploadLoop(
        state,
        Reaper(state),
        uploader,
        snapshot(),
        counters=counters,
        interval=1,
        drain_timeout=1,
        clock=Clock(NOON),
    )
    [batch] = await loop.tick()

    report = await uploader.upload_batch(batch, loop.snapshot.config.routing)

    assert report.failed == 1
    [row] = [state.instance(instance.id) for instance in batch.instances]
    assert row.last_error == "unexpected KeyError in the destination while uploading"


async def test_the_figures_of_a_deferred_series_are_its_true_values(
    state: AgentState, spool: Spool, destination: BuiltinStoreDestination
) -> None:
    datasets = series_datasets(3, comments="fw://neuro/study-a")
    uid = datasets[0].SeriesInstanceUID
    received_at = NOON - 100
    spool_datasets(spool, datasets, received_at)
    sizes = sum(row.size for row in state.spooled_instances(uid, NOON))
    clock, counters, figures = Clock(NOON), PipelineCounters(), FiguresBuffer()
    uploader = Uploader(state, destination, concurrency=4, counters=counters, clock=clock)
    loop = UploadLoop(
        state,
        Reaper(state, clock=clock),
        uploader,
        snapshot("18:00-06:00"),
        counters=counters,
        interval=0.05,
        drain_timeout=5,
        clock=clock,
        figures=figures,
    )

    assert await loop.tick() == []  # noon: outside the window, the series waits
    clock.now = EVENING
    running = asyncio.create_task(loop.run())
    try:
        await wait_until(lambda: len(figures) == 1)
    finally:
        loop.stop()
        await running

    (item,) = figures.take()
    assert item.deferred_s == EVENING - NOON  # from the first tick that held it back
    assert (item.instances_received, item.instances_stored) == (3, 3)
    assert (item.instances_failed, item.instances_retrying) == (0, 0)
    assert item.bytes_uploaded == sizes
    assert item.last_received_at.timestamp() == received_at
    assert item.stored_at.timestamp() == EVENING
    assert item.routing_reason == "routed"
    assert item.calling_ae is None  # spooled without an association: no calling AE title
