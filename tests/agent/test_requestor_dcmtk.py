"""The requestor of PULL against dcmtk's `dcmqrscp` as the query/retrieve SCP (a third
independent implementation beside Orthanc and pynetdicom): a query round counts the series,
C-GET brings the instances onto the agent's association, C-MOVE sends them to the agent's
listener. Every requestor engine; real processes on 127.0.0.1 with TCP_NODELAY=1."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from agent.dicom.listeners import make_listener
from agent.dicom.scu import RequestorEngine, Scu, SourceAddress, SourceError, SpoolSink
from agent.pull.ledger import RemoteSeries
from agent.pull.query import QueryRounds
from agent.spool import Spool
from agent.state import AgentState
from tests.support.dicom_factory import make_series, write_files
from tests.support.environment import free_port, require_executable, tool_env
from tests.support.scu import storescu

STUDY = "1.2.826.0.1.3680043.8.498.30"
SERIES = "1.2.826.0.1.3680043.8.498.31"
AGENT_AE = "CONNECTOR"
_START_SECONDS = 10.0


class Dcmqrscp:
    """`dcmqrscp` with one storage area (AE title QRSCP) that knows the agent's AE title at
    `agent_port` as a move destination."""

    def __init__(self, workdir: Path, agent_port: int) -> None:
        self.port = free_port()
        database = workdir / "db"
        database.mkdir(parents=True)
        config = workdir / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\n"
            "MaxPDUSize = 16384\n"
            "MaxAssociations = 16\n"
            "HostTable BEGIN\n"
            f"agent = ({AGENT_AE}, 127.0.0.1, {agent_port})\n"
            "HostTable END\n"
            "VendorTable BEGIN\n"
            "VendorTable END\n"
            "AETable BEGIN\n"
            f"QRSCP {database} RW (100, 1024mb) ANY\n"
            "AETable END\n"
        )
        self._process = subprocess.Popen(
            # Its default mode forks a child per association (--single-process serves one
            # association and exits); its own session, so stopping ends the children too.
            [require_executable("dcmqrscp"), "-c", str(config), str(self.port)],
            env=tool_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.address = SourceAddress("QRSCP", "127.0.0.1", self.port)

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            try:
                Scu(self.address, calling_ae_title=AGENT_AE, timeout=1).echo()
                return
            except SourceError:
                time.sleep(0.1)
        raise RuntimeError(f"dcmqrscp did not answer C-ECHO within {_START_SECONDS:g} s")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        self._process.wait(timeout=10)


@pytest.fixture
def listener(spool: Spool) -> Iterator[int]:
    """The agent's lean listener, the C-MOVE destination; yields its port."""
    started = make_listener(
        "lean", ae_title=AGENT_AE, host="127.0.0.1", port=0, peers=(), spool=spool
    )
    port = started.start()
    yield port
    started.stop(timeout=5)


@pytest.fixture
def qrscp(tmp_path: Path, listener: int) -> Iterator[Dcmqrscp]:
    server = Dcmqrscp(tmp_path / "dcmqrscp", listener)
    try:
        server.wait_until_listening()
        today = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%d")
        series = make_series(
            3,
            patient_id="DCMQR01",
            study_uid=STUDY,
            series_uid=SERIES,
            series_description="dcmqrscp",
            study_description="dcmqrscp",
            rows=8,
            cols=8,
            transfer_syntax=ExplicitVRLittleEndian,
            extra={"StudyDate": today, "SeriesDate": today},
        )
        storescu(server.port, write_files(series, tmp_path / "files"), called_ae="QRSCP")
        yield server
    finally:
        server.stop()


def test_a_query_round_finds_the_series_with_its_count(
    qrscp: Dcmqrscp, requestor_engine: RequestorEngine
) -> None:
    scu = Scu(qrscp.address, calling_ae_title=AGENT_AE, timeout=10, engine=requestor_engine)
    since = dt.datetime.now(tz=dt.UTC).date() - dt.timedelta(days=1)

    assert QueryRounds(scu).run(since) == [RemoteSeries(STUDY, SERIES, 3)]


def test_c_get_and_c_move_bring_the_series_into_the_spool(
    qrscp: Dcmqrscp, spool: Spool, state: AgentState, requestor_engine: RequestorEngine
) -> None:
    scu = Scu(qrscp.address, calling_ae_title=AGENT_AE, timeout=10, engine=requestor_engine)

    with scu.retrieve_by_get(SpoolSink(spool)) as session:
        got = session.series(STUDY, SERIES)
    assert (got.completed, got.ok) == (3, True)
    assert len(state.series_sop_instance_uids(SERIES)) == 3

    with scu.retrieve_by_move(AGENT_AE) as session:
        moved = session.series(STUDY, SERIES)
    assert (moved.completed, moved.ok) == (3, True)  # duplicates: stored once, still Success
