"""The requestor of PULL against pynetdicom as the query/retrieve SCP (C-FIND, C-MOVE and C-GET
providers in this process) and against raw-socket peers that misbehave: every requestor engine
retrieves what the SCP offers with its counts, and a rejection, an A-ABORT in the middle of a
retrieval, a peer that never answers or answers garbage, and an abort from another thread end
in a `SourceError`, never a hang or a crash. Real associations on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from agent.dicom.engine.commands import StoreRequest
from agent.dicom.engine.pdu import decode_request, negotiate
from agent.dicom.engine.requestor import RequestedContext, Requestor
from agent.dicom.listeners import make_listener
from agent.dicom.scu import RequestorEngine, Scu, SourceAddress, SourceError, SpoolSink
from agent.spool import Spool
from agent.state import AgentState
from tests.support.dicom_factory import make_series
from tests.support.raw_dicom import read_pdu

STUDY = "1.2.826.0.1.3680043.8.498.20"
SERIES = "1.2.826.0.1.3680043.8.498.21"
AGENT_AE = "CONNECTOR"


class QrScp:
    """pynetdicom as a Study Root C-FIND/C-MOVE/C-GET SCP over `instances` of one series.

    `abort_after` aborts the association after that many C-GET/C-MOVE sub-operations;
    `hold` makes every request wait until it is set (a peer that never answers); C-FIND
    answers `matches` identifiers and notes when it saw a C-CANCEL.
    """

    def __init__(self, instances: list[Dataset], *, matches: int = 3) -> None:
        self.instances = instances
        self.matches = matches
        self.abort_after: int | None = None
        self.hold: threading.Event | None = None
        self.cancelled = threading.Event()
        self.destinations: dict[str, tuple[str, int]] = {}
        ae = AE(ae_title="QRSCP")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_supported_context(Verification)
        ae.add_supported_context(
            MRImageStorage, ExplicitVRLittleEndian, scu_role=True, scp_role=True
        )
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)  # C-MOVE's sub-ops
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 10
        handlers = [
            (evt.EVT_C_FIND, self._find),
            (evt.EVT_C_MOVE, self._move),
            (evt.EVT_C_GET, self._get),
        ]
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.address = SourceAddress("QRSCP", "127.0.0.1", self._server.server_address[1])

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self._server.shutdown()

    def _wait(self) -> None:
        if self.hold is not None:
            self.hold.wait(30)

    def _find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        self._wait()
        for number in range(self.matches):
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            found = Dataset()
            found.QueryRetrieveLevel = "SERIES"
            found.StudyInstanceUID = STUDY
            found.SeriesInstanceUID = f"{SERIES}.{number + 1}"
            found.NumberOfSeriesRelatedInstances = 1
            time.sleep(0.01)  # so a cancel can arrive while matches remain
            yield 0xFF00, found

    def _move(self, event: Event) -> Iterator[object]:
        self._wait()
        host, port = self.destinations[str(event.move_destination).strip()]
        yield host, port
        yield len(self.instances)
        yield from self._sub_operations(event)

    def _get(self, event: Event) -> Iterator[object]:
        self._wait()
        yield len(self.instances)
        yield from self._sub_operations(event)

    def _sub_operations(self, event: Event) -> Iterator[tuple[int, Dataset]]:
        for number, ds in enumerate(self.instances):
            if self.abort_after is not None and number == self.abort_after:
                event.assoc.abort()
                return
            yield 0xFF00, ds


def mr_series(count: int) -> list[Dataset]:
    return make_series(
        count,
        patient_id="QR01",
        study_uid=STUDY,
        series_uid=SERIES,
        series_description="qr",
        study_description="qr",
        rows=8,
        cols=8,
        transfer_syntax=ExplicitVRLittleEndian,
    )


@pytest.fixture
def qr() -> Iterator[QrScp]:
    scp = QrScp(mr_series(5))
    yield scp
    scp.stop()


def scu(address: SourceAddress, engine: RequestorEngine, timeout: float = 10.0) -> Scu:
    return Scu(address, calling_ae_title=AGENT_AE, timeout=timeout, engine=engine)


def test_c_get_brings_every_instance_onto_the_association_into_the_spool(
    qr: QrScp, spool: Spool, state: AgentState, requestor_engine: RequestorEngine
) -> None:
    with scu(qr.address, requestor_engine).retrieve_by_get(SpoolSink(spool)) as session:
        outcome = session.series(STUDY, SERIES)

    assert (outcome.completed, outcome.failed, outcome.ok) == (5, 0, True)
    assert state.series_sop_instance_uids(SERIES) == {ds.SOPInstanceUID for ds in qr.instances}


def test_c_move_reports_the_sub_operations_and_the_destination_gets_them(
    qr: QrScp, spool: Spool, state: AgentState, requestor_engine: RequestorEngine
) -> None:
    listener = make_listener(
        "lean", ae_title=AGENT_AE, host="127.0.0.1", port=0, peers=(), spool=spool
    )
    qr.destinations[AGENT_AE] = ("127.0.0.1", listener.start())
    try:
        with scu(qr.address, requestor_engine).retrieve_by_move(AGENT_AE) as session:
            outcome = session.instances(
                STUDY, SERIES, [ds.SOPInstanceUID for ds in qr.instances[:3]]
            )
    finally:
        listener.stop(timeout=5)

    assert (outcome.completed, outcome.ok) == (5, True)  # the SCP sends what it holds
    assert len(state.series_sop_instance_uids(SERIES)) == 5


def test_an_a_abort_in_the_middle_of_a_retrieval_is_a_source_error(
    qr: QrScp, spool: Spool, state: AgentState, requestor_engine: RequestorEngine
) -> None:
    qr.abort_after = 2

    with (
        pytest.raises(SourceError, match=r"QRSCP@127\.0\.0\.1:\d+"),
        scu(qr.address, requestor_engine).retrieve_by_get(SpoolSink(spool)) as session,
    ):
        session.series(STUDY, SERIES)

    assert len(state.series_sop_instance_uids(SERIES)) == 2  # what came before the abort stays


def test_a_source_that_accepts_but_never_answers_times_out_with_a_source_error(
    qr: QrScp, requestor_engine: RequestorEngine
) -> None:
    qr.hold = threading.Event()
    # The timeout also bounds the association set-up, which a loaded machine can stretch.
    slow = scu(qr.address, requestor_engine, timeout=2.0)

    with (
        pytest.raises(SourceError, match=r"did not answer the series-level C-FIND within 2 s"),
        slow.query() as session,
    ):
        session.series(STUDY)


def test_an_abort_from_another_thread_ends_a_retrieval_under_way(qr: QrScp, spool: Spool) -> None:
    # Lean only: pynetdicom's requestor keeps waiting for the response until its DIMSE
    # timeout after an abort from another thread (docs/intake.md).
    qr.hold = threading.Event()
    patient = scu(qr.address, "lean", timeout=30)
    failures: list[BaseException] = []

    def retrieve() -> None:
        try:
            with patient.retrieve_by_get(SpoolSink(spool)) as session:
                session.series(STUDY, SERIES)
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=retrieve)
    worker.start()
    time.sleep(0.5)  # the C-GET is out and waiting
    patient.abort()
    worker.join(timeout=10)

    assert not worker.is_alive()
    assert len(failures) == 1
    assert isinstance(failures[0], SourceError)
    with pytest.raises(SourceError, match="the agent is stopping"):
        patient.echo()


def test_a_query_stopped_early_is_cancelled_and_the_association_stays_usable(
    qr: QrScp,
) -> None:
    qr.matches = 50
    link_scu = scu(qr.address, "lean")
    with link_scu.query() as session:
        link = session._link  # the SourceLink: stop reading after two matches
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = STUDY
        query.SeriesInstanceUID = ""
        responses = link.find(query, "series-level C-FIND")
        first = [next(responses), next(responses)]
        responses.close()  # type: ignore[attr-defined]

        again = session.series(STUDY)

    assert [code for code, _ in first] == [0xFF00, 0xFF00]
    assert qr.cancelled.is_set()
    assert len(again) == 50


class RawPeer:
    """A TCP peer on 127.0.0.1 that answers each connection with `answer(sock)`."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._answer = answer
        self._stop = threading.Event()
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self.address = SourceAddress("RAW", "127.0.0.1", self._listener.getsockname()[1])

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._connections.append(connection)
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self._connections:
            connection.close()
        self._listener.close()


def _accept_echo(sock: socket.socket) -> None:
    """Accept the association (Verification only) with the acceptor's own negotiation."""
    answer = read_pdu(sock)
    assert answer is not None
    pdu_type, body = answer
    request = decode_request(bytes((pdu_type, 0)) + len(body).to_bytes(4, "big") + body)
    sock.sendall(negotiate(request, 16384).accept_pdu)


def _silent_after_accepting(sock: socket.socket) -> None:
    _accept_echo(sock)
    while sock.recv(4096):  # reads the C-ECHO, never answers
        pass


def _garbage_after_accepting(sock: socket.socket) -> None:
    _accept_echo(sock)
    read_pdu(sock)
    sock.sendall(b"\x09\x00\x00\x00\x00\x02\xff\xff")  # an unknown PDU type


def _rejecting(sock: socket.socket) -> None:
    read_pdu(sock)
    sock.sendall(bytes((0x03, 0, 0, 0, 0, 4, 0, 0x01, 0x01, 0x03)))


def _closing(sock: socket.socket) -> None:
    read_pdu(sock)
    sock.close()


# Only the silent peer waits out the timeout; the others answer at once, and a short timeout
# there made a loaded machine's slow answer read as no answer.
@pytest.mark.parametrize(
    ("answer", "timeout", "message"),
    [
        (_silent_after_accepting, 0.5, r"did not answer the C-ECHO within 0\.5 s"),
        (_rejecting, 10.0, "rejected the association for C-ECHO"),
        (_closing, 10.0, "no association with RAW@127.0.0.1"),
    ],
    ids=["silent", "rejection", "closed"],
)
def test_a_misbehaving_peer_ends_in_a_source_error(
    answer: Callable[[socket.socket], None],
    timeout: float,
    message: str,
    requestor_engine: RequestorEngine,
) -> None:
    peer = RawPeer(answer)
    try:
        with pytest.raises(SourceError, match=message):
            scu(peer.address, requestor_engine, timeout=timeout).echo()
    finally:
        peer.close()


def test_an_unknown_pdu_in_answer_is_aborted_with_a_source_error() -> None:
    # Lean only: pynetdicom's requestor waits out its timeouts on an unknown PDU type.
    peer = RawPeer(_garbage_after_accepting)
    try:
        with pytest.raises(SourceError, match=r"RAW@127\.0\.0\.1:\d+ failed the C-ECHO"):
            scu(peer.address, "lean", timeout=5).echo()
    finally:
        peer.close()


def test_the_lean_rejection_names_the_reason(qr: QrScp) -> None:
    peer = RawPeer(_rejecting)
    try:
        with pytest.raises(SourceError, match="calling AE title not recognised"):
            scu(peer.address, "lean").echo()
    finally:
        peer.close()


def test_a_query_round_against_a_pynetdicom_scp_dated_by_the_window(qr: QrScp) -> None:
    with scu(qr.address, "lean").query() as session:
        found = session.series(STUDY)
        studies = session.studies(dt.date(2024, 1, 1))

    assert [match.series_instance_uid for match in found] == [f"{SERIES}.{n}" for n in (1, 2, 3)]
    assert all(match.instance_count == 1 for match in found)
    assert isinstance(studies, list)


def test_c_get_data_sets_fragmented_over_many_pdus_arrive_whole() -> None:
    # The requestor announces 16 KiB: each ~130 KB instance comes in nine or more PDUs.
    instances = make_series(
        3,
        patient_id="QR02",
        study_uid=STUDY,
        series_uid=SERIES,
        series_description="large",
        study_description="large",
        rows=256,
        cols=256,
        transfer_syntax=ExplicitVRLittleEndian,
    )
    scp = QrScp(instances)
    received: dict[str, bytes] = {}

    def store(
        request: StoreRequest, syntax: str, part10: bytearray, offset: int, _at: float
    ) -> tuple[int, str | None]:
        received[request.sop_instance_uid] = bytes(part10)
        assert syntax == ExplicitVRLittleEndian
        assert part10[128:132] == b"DICM"
        assert offset > 132
        return 0x0000, None

    contexts = [
        RequestedContext(str(StudyRootQueryRetrieveInformationModelGet), (ImplicitVRLittleEndian,)),
        RequestedContext(str(MRImageStorage), (ExplicitVRLittleEndian,), scp_role=True),
    ]
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = STUDY
    identifier.SeriesInstanceUID = SERIES
    try:
        requestor = Requestor.open(
            "127.0.0.1",
            scp.address.port,
            calling_ae_title=AGENT_AE,
            called_ae_title="QRSCP",
            contexts=contexts,
            timeout=10,
            maximum_pdu=16384,
            store=store,
        )
        responses = list(requestor.get(identifier, str(StudyRootQueryRetrieveInformationModelGet)))
        requestor.release()
    finally:
        scp.stop()

    final = responses[-1][0]
    assert (final.status, final.completed, final.failed) == (0x0000, 3, 0)
    assert sorted(received) == sorted(ds.SOPInstanceUID for ds in instances)
    for ds in instances:
        read = dcmread(BytesIO(received[ds.SOPInstanceUID]))
        assert read.PixelData == ds.PixelData
