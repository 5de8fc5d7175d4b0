"""Pull rounds against a real Orthanc: what is retrieved, when, how often, and what is not.

Each test runs Orthanc (Debian's) as the PACS and the agent's real intake (state database,
spool, a listener of each intake engine as the C-MOVE destination, each requestor engine
asking), and drives
`SourcePoller.poll_once` round by round with a clock it moves by hand, so stability and grace
periods need no sleeping. Orthanc's C-MOVE and C-GET requests are counted from its log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from agent.dicom.listeners import IntakeEngine, make_listener
from agent.dicom.scu import RequestorEngine, SpoolSink
from agent.health import PipelineCounters
from agent.pull.ledger import PullLedger, SeriesState
from agent.pull.poller import SourcePoller
from agent.site import SiteSnapshot
from agent.spool import Spool, SpoolFull
from agent.state import AddOutcome, AgentState
from common.config import validate_site_config
from tests.support.dicom_factory import make_series
from tests.support.orthanc import Orthanc, running_orthanc

pytestmark = pytest.mark.orthanc

AGENT_AE = "CONNECTOR"
DELAY = 30.0  # acquisition_delay of these tests, in seconds of the hand-moved clock
DAY = 86_400.0


class Clock:
    """Wall-clock time that only moves when the test says so."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingSpool(Spool):
    """The real spool, counting what arrives and refusing the SOP UIDs in `refuse` as full."""

    def __init__(self, root: Path, state: AgentState) -> None:
        super().__init__(root, state)
        self.stores = 0
        self.refuse: set[str] = set()

    def store(self, part10: Any, **kwargs: Any) -> AddOutcome:
        self.stores += 1
        if kwargs["sop_instance_uid"] in self.refuse:
            raise SpoolFull("refused by the test")
        return super().store(part10, **kwargs)


def study_today(clock: Clock, series_count: int, per_series: int) -> list[list[Dataset]]:
    """One study dated on the clock's (UTC) day, of `series_count` small series."""
    day = dt.datetime.fromtimestamp(clock.now, tz=dt.UTC).strftime("%Y%m%d")
    study = generate_uid()
    return [
        make_series(
            per_series,
            patient_id="PULL01",
            study_uid=study,
            series_uid=generate_uid(),
            series_description=f"series {number}",
            study_description="pull test",
            patient_comments="fw://neuro/study-a",
            series_number=number,
            rows=16,
            cols=16,
            extra={"StudyDate": day, "SeriesDate": day},
        )
        for number in range(1, series_count + 1)
    ]


def snapshot_for(pacs: Orthanc, **overrides: Any) -> SiteSnapshot:
    source = {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}
    source |= overrides.pop("source", {})
    document = {
        "mode": "pull",
        "dicom": {"ae_title": AGENT_AE},
        "pull": {"sources": [source], **overrides.pop("pull", {})},
        "timing": {"acquisition_delay": f"{DELAY:g}s", "sleep_time": "1s", **overrides},
    }
    return SiteSnapshot("default", 1, "UTC", validate_site_config(document))


class Intake:
    """The agent's receiving side for one test: state, spool, listener, and a poller factory."""

    def __init__(
        self,
        tmp_path: Path,
        pacs: Orthanc,
        clock: Clock,
        engine: IntakeEngine,
        requestor_engine: RequestorEngine,
    ) -> None:
        self.state = AgentState.open(tmp_path / "state.db")
        self.spool = CountingSpool(tmp_path / "spool", self.state)
        self.listener = make_listener(
            engine, ae_title=AGENT_AE, host="127.0.0.1", port=0, peers=(), spool=self.spool
        )
        self.pacs = pacs
        self.clock = clock
        self.ledger = PullLedger(self.state)
        self.counters = PipelineCounters()
        self.requestor_engine = requestor_engine

    def start(self) -> None:
        port = self.listener.start()
        self.pacs.register_modality("agent", AGENT_AE, "127.0.0.1", port)

    def close(self) -> None:
        self.listener.stop(timeout=5)
        self.state.close()

    def poller(self, **overrides: Any) -> SourcePoller:
        snapshot = snapshot_for(self.pacs, **overrides)
        (source,) = snapshot.config.pull.sources
        return SourcePoller(
            source,
            snapshot,
            state=self.state,
            ledger=self.ledger,
            sink=SpoolSink(self.spool),
            slots=asyncio.Semaphore(snapshot.config.pull.max_concurrent_retrievals),
            counters=self.counters,
            clock=self.clock,
            requestor_engine=self.requestor_engine,
        )

    def known(self, series: list[Dataset]) -> set[str]:
        return self.state.series_sop_instance_uids(series[0].SeriesInstanceUID)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock(dt.datetime.now(tz=dt.UTC).timestamp())


@pytest.fixture
def intake(
    tmp_path: Path,
    pacs: Orthanc,
    clock: Clock,
    intake_engine: IntakeEngine,
    requestor_engine: RequestorEngine,
) -> Iterator[Intake]:
    opened = Intake(tmp_path / "agent", pacs, clock, intake_engine, requestor_engine)
    opened.start()
    yield opened
    opened.close()


def uids(series: list[Dataset]) -> set[str]:
    return {ds.SOPInstanceUID for ds in series}


async def test_a_series_is_retrieved_once_its_count_is_stable_for_the_acquisition_delay(
    pacs: Orthanc, intake: Intake, clock: Clock
) -> None:
    (series,) = study_today(clock, 1, 3)
    pacs.upload(series)
    poller = intake.poller()

    first = await poller.poll_once()
    clock.advance(DELAY)
    second = await poller.poll_once()

    assert first.changes is not None
    assert (first.changes.new, first.retrievals) == (1, ())
    assert [result.complete for result in second.retrievals] == [True]
    assert intake.known(series) == uids(series)
    assert pacs.move_requests() == 1
    tracked = intake.ledger.series(poller.key, series[0].SeriesInstanceUID)
    assert tracked is not None
    assert (tracked.state, tracked.retrieved_count) == (SeriesState.retrieved, 3)


async def test_a_growing_series_is_not_retrieved_until_its_count_stops_changing(
    pacs: Orthanc, intake: Intake, clock: Clock
) -> None:
    (series,) = study_today(clock, 1, 5)
    poller = intake.poller()
    pacs.upload(series[:2])
    await poller.poll_once()
    clock.advance(DELAY - 1)
    pacs.upload(series[2:4])
    await poller.poll_once()
    clock.advance(DELAY - 1)
    pacs.upload(series[4:])
    growing = await poller.poll_once()
    assert growing.retrievals == ()
    assert pacs.move_requests() == 0

    clock.advance(DELAY)
    stable = await poller.poll_once()

    assert [result.expected for result in stable.retrievals] == [5]
    assert intake.known(series) == uids(series)
    assert pacs.move_requests() == 1


async def test_a_series_deleted_and_added_again_inside_the_grace_period_is_not_retrieved_again(
    pacs: Orthanc, intake: Intake, clock: Clock
) -> None:
    (series,) = study_today(clock, 1, 3)
    pacs.upload(series)
    poller = intake.poller(grace_period="7d", pull={"lookback": "30d"})
    await poller.poll_once()
    clock.advance(DELAY)
    await poller.poll_once()
    assert pacs.move_requests() == 1

    pacs.delete_series(series[0].SeriesInstanceUID)
    clock.advance(DAY)
    gone = await poller.poll_once()
    pacs.upload(series)
    clock.advance(6 * DAY)
    back = await poller.poll_once()
    clock.advance(DELAY)
    later = await poller.poll_once()

    assert gone.changes is not None
    assert gone.changes.vanished == 1
    assert back.changes is not None
    assert back.changes.reappeared == 1
    assert (back.retrievals, later.retrievals) == ((), ())
    assert pacs.move_requests() == 1
    assert intake.spool.stores == 3


async def test_a_series_that_comes_back_after_the_grace_period_is_retrieved_as_new(
    pacs: Orthanc, intake: Intake, clock: Clock
) -> None:
    (series,) = study_today(clock, 1, 3)
    pacs.upload(series)
    poller = intake.poller(grace_period="7d", pull={"lookback": "30d"})
    await poller.poll_once()
    clock.advance(DELAY)
    await poller.poll_once()

    pacs.delete_series(series[0].SeriesInstanceUID)
    gone = await poller.poll_once()
    clock.advance(7 * DAY + 1)
    forgotten = await poller.poll_once()
    pacs.upload(series)
    seen_again = await poller.poll_once()
    clock.advance(DELAY)
    retrieved = await poller.poll_once()

    assert gone.changes is not None
    assert gone.changes.vanished == 1
    assert forgotten.changes is not None
    assert forgotten.changes.forgotten == 1
    assert seen_again.changes is not None
    assert seen_again.changes.new == 1
    assert [result.complete for result in retrieved.retrievals] == [True]
    assert pacs.move_requests() == 2
    # The spool still knows the content: the second copy is stored once, not uploaded twice.
    assert intake.state.stats().spooled_count == 3


async def test_a_new_series_of_a_known_study_is_retrieved_alone(
    pacs: Orthanc, intake: Intake, clock: Clock
) -> None:
    first, second = study_today(clock, 2, 2)
    pacs.upload(first)
    poller = intake.poller()
    await poller.poll_once()
    clock.advance(DELAY)
    await poller.poll_once()

    pacs.upload(second)
    await poller.poll_once()
    clock.advance(DELAY)
    picked_up = await poller.poll_once()

    assert [result.series_instance_uid for result in picked_up.retrievals] == [
        second[0].SeriesInstanceUID
    ]
    assert intake.known(second) == uids(second)
    assert pacs.move_requests() == 2
    assert intake.spool.stores == 4


async def test_instances_added_to_a_retrieved_series_are_retrieved_alone_without_duplicates(
    pacs: Orthanc, intake: Intake, clock: Clock
) -> None:
    (series,) = study_today(clock, 1, 5)
    pacs.upload(series[:3])
    poller = intake.poller()
    await poller.poll_once()
    clock.advance(DELAY)
    await poller.poll_once()
    assert intake.spool.stores == 3

    pacs.upload(series[3:])
    await poller.poll_once()
    clock.advance(DELAY)
    delta = await poller.poll_once()

    (result,) = delta.retrievals
    assert (result.expected, result.received, result.requests) == (5, 2, 1)
    assert intake.spool.stores == 5  # the two new ones only: nothing sent twice
    assert intake.known(series) == uids(series)
    assert pacs.move_requests() == 2


async def test_c_get_retrieves_series_and_later_instances_on_the_agents_own_association(
    pacs: Orthanc, intake: Intake, clock: Clock
) -> None:
    (series,) = study_today(clock, 1, 6)
    pacs.upload(series[:4])
    poller = intake.poller(source={"retrieve": "get"})
    await poller.poll_once()
    clock.advance(DELAY)
    whole = await poller.poll_once()
    pacs.upload(series[4:])
    await poller.poll_once()
    clock.advance(DELAY)
    delta = await poller.poll_once()

    assert [(r.received, r.complete) for r in whole.retrievals] == [(4, True)]
    assert [(r.received, r.complete) for r in delta.retrievals] == [(2, True)]
    assert intake.known(series) == uids(series)
    assert (pacs.get_requests(), pacs.move_requests()) == (2, 0)
    assert intake.spool.stores == 6


async def test_a_retrieval_that_stays_short_is_retried_then_reported_with_the_missing_count(
    pacs: Orthanc, intake: Intake, clock: Clock
) -> None:
    (series,) = study_today(clock, 1, 4)
    pacs.upload(series)
    intake.spool.refuse = {series[1].SOPInstanceUID}
    poller = intake.poller()
    await poller.poll_once()
    clock.advance(DELAY)

    short = await poller.poll_once()

    (result,) = short.retrievals
    assert (result.expected, result.missing, result.requests) == (4, 1, 3)
    health = poller.health()
    assert (health.series_short, health.instances_missing, health.retrievals_failed) == (1, 1, 1)
    assert health.last_retrieve_error is not None
    assert "1 of 4 instances did not arrive" in health.last_retrieve_error

    intake.spool.refuse = set()
    clock.advance(2 * 3600)
    retried = await poller.poll_once()
    assert [(r.received, r.complete) for r in retried.retrievals] == [(1, True)]
    assert poller.health().series_short == 0
    assert intake.known(series) == uids(series)


async def test_a_source_that_is_down_is_an_error_not_an_empty_source_and_recovers(
    pacs: Orthanc, intake: Intake, clock: Clock
) -> None:
    (series,) = study_today(clock, 1, 2)
    pacs.upload(series)
    poller = intake.poller(source={"timeout": "5s"})
    await poller.poll_once()

    pacs.stop()
    clock.advance(DELAY)
    echoed = await poller.echo()
    down = await poller.poll_once()
    health = poller.health()
    assert (echoed, health.echo_ok) == (False, False)
    assert (down.ok, down.changes) == (False, None)
    assert (health.last_round_ok, health.consecutive_failed_rounds) == (False, 1)
    assert health.last_query_error is not None
    assert pacs.ae_title in health.last_query_error
    # Nothing was taken for "vanished": the series is still tracked as present.
    assert (health.series_tracked, health.series_vanished) == (1, 0)
    assert intake.counters.last_error == health.last_query_error

    pacs.start()
    back = await poller.poll_once()
    assert back.ok
    assert [result.complete for result in back.retrievals] == [True]
    health = poller.health()
    assert (health.last_round_ok, health.last_query_error) == (True, None)
    assert health.series_retrieved == 1
