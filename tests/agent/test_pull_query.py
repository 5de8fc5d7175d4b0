"""Query rounds against sources that are not Orthanc: one that gives no instance counts, one
that fails a query half-way, one that never answers. Real associations on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import re
import socket
import threading
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from agent.dicom.scu import Scu, SourceAddress, SourceError
from agent.pull.ledger import RemoteSeries
from agent.pull.query import QueryRounds

STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = {"1.2.826.0.1.3680043.8.498.11": 3, "1.2.826.0.1.3680043.8.498.12": 1}
SINCE = dt.date(2024, 1, 1)


class FindScp:
    """A Study Root C-FIND SCP over one study of `SERIES`. It sends study-level counts only
    when `counts` is set, never NumberOfSeriesRelatedInstances, and answers the levels in
    `fail_levels` with a failure status."""

    def __init__(self, *, counts: bool = False, fail_levels: frozenset[str] = frozenset()) -> None:
        self.counts = counts
        self.series = dict(SERIES)
        self.fail_levels = fail_levels
        self.levels: list[str] = []
        ae = AE(ae_title="FINDSCP")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, self._find)]
        )
        self._running = True
        self.address = SourceAddress("FINDSCP", "127.0.0.1", self._server.server_address[1])

    def stop(self) -> None:
        """Stop the server; idempotent."""
        if self._running:
            self._running = False
            self._server.shutdown()

    def _find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        level = str(event.identifier.QueryRetrieveLevel)
        self.levels.append(level)
        if level in self.fail_levels:
            yield 0xC311, None
            return
        if level == "STUDY":
            study = _answer(StudyInstanceUID=STUDY)
            if self.counts:
                study.NumberOfStudyRelatedSeries = len(self.series)
                study.NumberOfStudyRelatedInstances = sum(self.series.values())
            yield 0xFF00, study
        elif level == "SERIES":
            for uid in self.series:
                yield 0xFF00, _answer(StudyInstanceUID=STUDY, SeriesInstanceUID=uid)
        else:
            series = str(event.identifier.SeriesInstanceUID)
            for number in range(self.series[series]):
                yield 0xFF00, _answer(SOPInstanceUID=f"{series}.{number + 1}")


def _answer(**keys: object) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def countless() -> Iterator[FindScp]:
    scp = FindScp()
    yield scp
    scp.stop()


@pytest.fixture
def counting() -> Iterator[FindScp]:
    scp = FindScp(counts=True)
    yield scp
    scp.stop()


@pytest.fixture
def failing_series_level() -> Iterator[FindScp]:
    scp = FindScp(fail_levels=frozenset({"SERIES"}))
    yield scp
    scp.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def scu_for(address: SourceAddress, timeout: float = 5.0) -> Scu:
    return Scu(address, calling_ae_title="CONNECTOR", timeout=timeout)


def test_a_series_without_an_instance_count_is_counted_with_an_image_level_query(
    countless: FindScp,
) -> None:
    found = QueryRounds(scu_for(countless.address)).run(SINCE)

    assert sorted(found, key=lambda series: series.series_instance_uid) == [
        RemoteSeries(STUDY, uid, count) for uid, count in SERIES.items()
    ]
    assert countless.levels == ["STUDY", "SERIES", "IMAGE", "IMAGE"]


def test_an_unchanged_study_keeps_its_series_without_asking_until_the_next_full_round(
    counting: FindScp,
) -> None:
    rounds = QueryRounds(scu_for(counting.address), full_every=3)
    first = rounds.run(SINCE)
    counting.levels.clear()

    second = rounds.run(SINCE)
    assert counting.levels == ["STUDY"]
    assert rounds.last_queries is not None
    assert (rounds.last_queries.studies, rounds.last_queries.series_queries) == (1, 0)

    counting.series["1.2.826.0.1.3680043.8.498.12"] = 2
    counting.levels.clear()
    grown = rounds.run(SINCE)
    assert counting.levels == ["STUDY", "SERIES", "IMAGE", "IMAGE"]

    counting.levels.clear()
    rounds.run(SINCE)
    assert counting.levels == ["STUDY", "SERIES", "IMAGE", "IMAGE"]  # the full round

    assert sorted(first, key=str) == sorted(second, key=str)
    assert {series.instance_count for series in grown} == {3, 2}


def test_a_query_that_fails_half_way_fails_the_whole_round(
    failing_series_level: FindScp,
) -> None:
    with pytest.raises(SourceError, match=r"series-level C-FIND with status 0xC311"):
        QueryRounds(scu_for(failing_series_level.address)).run(SINCE)


def test_a_source_that_connects_but_never_answers_times_out(silent_port: int) -> None:
    scu = scu_for(SourceAddress("SILENT", "127.0.0.1", silent_port), timeout=0.5)

    with pytest.raises(SourceError, match=re.escape("no association with SILENT@127.0.0.1")):
        scu.echo()
    with pytest.raises(SourceError, match=re.escape("within 0.5 s")):
        QueryRounds(scu).run(SINCE)


def test_c_echo_of_a_source_that_is_down_is_an_error(countless: FindScp) -> None:
    scu_for(countless.address).echo()
    countless.stop()

    with pytest.raises(SourceError, match="the source is down, unreachable, or refused"):
        scu_for(countless.address, timeout=1).echo()


def test_a_query_on_an_association_aborted_between_requests_is_a_source_error(
    countless: FindScp,
) -> None:
    scu = scu_for(countless.address)
    with scu.query() as session:
        assert [study.study_instance_uid for study in session.studies(SINCE)] == [STUDY]
        scu.abort()  # what shutdown does from another thread while a round is under way

        with pytest.raises(SourceError, match="ended before the series-level C-FIND"):
            session.series(STUDY)
