"""DicomListener against real pynetdicom SCUs on 127.0.0.1: statuses, durability, allowlist, stop.

Bad data sets are sent with pynetdicom's raw mode (`STORE_SEND_CHUNKED_DATASET`): it streams
the bytes after a Part-10 file's meta group as they are, so a test can put garbage or a cut-off
data set on the wire behind a valid C-STORE request.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pynetdicom._config
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from agent.dicom.file_meta import part10_header
from agent.dicom.intake import identify_spooled
from agent.dicom.listeners import IntakeEngine, Listener, make_listener
from agent.dicom.status import Status
from agent.spool import Spool
from agent.state import AgentState, InstanceState
from tests.support.dicom_factory import (
    dataset_offset,
    encode_part10,
    encoded_dataset,
    make_instance,
    make_series,
)
from tests.support.full_disk import FillingDisk
from tests.support.raw_dicom import rejection
from tests.support.spool_files import filled_slots

StartListener = Callable[..., Listener]


def instance(**overrides: object) -> Dataset:
    options: dict[str, object] = {
        "patient_id": "SCPTEST",
        "study_uid": generate_uid(),
        "series_uid": generate_uid(),
        "series_description": "scp test series",
        "study_description": "scp test study",
    }
    return make_instance(**(options | overrides))  # type: ignore[arg-type]


def associate(
    port: int,
    contexts: list[tuple[str, str]] | None = None,
    *,
    ae_title: str = "SCANNER",
    called: str = "CONNECTOR",
) -> Association:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    for sop_class, syntax in contexts or [(MRImageStorage, ExplicitVRLittleEndian)]:
        ae.add_requested_context(sop_class, syntax)
    return ae.associate("127.0.0.1", port, ae_title=called)


@pytest.fixture
def open_association() -> Iterator[Callable[..., Association]]:
    """Like `associate`, and releases (or aborts) whatever the test left open."""
    opened: list[Association] = []

    def open_(*args: object, **kwargs: object) -> Association:
        assoc = associate(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(assoc)
        return assoc

    yield open_
    for assoc in opened:
        if assoc.is_established:
            assoc.release()


@pytest.fixture
def raw_send(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Dataset]:
    """Send Part-10 bytes' data set exactly as they are (valid or not) on an association."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    counter = iter(range(1_000_000))

    def send(assoc: Association, part10: bytes) -> Dataset:
        path = tmp_path / f"raw-{next(counter)}.dcm"
        path.write_bytes(part10)
        return assoc.send_c_store(path)

    return send


def stored_files(spool: Spool) -> list[Path]:
    return filled_slots(spool.root)


def test_echo_succeeds(
    start_listener: StartListener, open_association: Callable[..., Association]
) -> None:
    listener = start_listener()

    assoc = open_association(listener.port)

    assert assoc.is_established
    assert assoc.send_c_echo().Status == Status.SUCCESS


def test_start_on_port_zero_returns_the_bound_port(
    spool: Spool, intake_engine: IntakeEngine
) -> None:
    listener = make_listener(
        intake_engine, ae_title="CONNECTOR", host="127.0.0.1", port=0, peers=(), spool=spool
    )
    port = listener.start()
    try:
        assert port > 0
        assert listener.port == port
    finally:
        listener.stop(timeout=5)


def test_store_is_durable_and_recorded_before_success_arrives(
    start_listener: StartListener,
    open_association: Callable[..., Association],
    state: AgentState,
    spool: Spool,
) -> None:
    stored: list[str] = []
    listener = start_listener(on_stored=stored.append)
    ds = instance()
    assoc = open_association(listener.port)

    response = assoc.send_c_store(ds)

    # Read right after the response, before anything else happens on the association.
    assert response.Status == Status.SUCCESS
    (row,) = state.spooled_instances(ds.SeriesInstanceUID)
    assert (row.sop_instance_uid, row.study_instance_uid) == (
        ds.SOPInstanceUID,
        ds.StudyInstanceUID,
    )
    assert row.state is InstanceState.spooled
    written = row.path.read_bytes()
    assert hashlib.sha256(written).hexdigest() == row.sha256
    assert written[dataset_offset(written) :] == encoded_dataset(ds)
    assert stored == [ds.SeriesInstanceUID]
    meta = dcmread(row.path).file_meta
    assert (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID) == (
        ds.SOPInstanceUID,
        ExplicitVRLittleEndian,
    )
    assert meta.SourceApplicationEntityTitle == "SCANNER"
    assert stored_files(spool) == [row.path]


def test_a_series_on_one_association_is_stored_completely(
    start_listener: StartListener,
    open_association: Callable[..., Association],
    state: AgentState,
) -> None:
    listener = start_listener()
    series = make_series(
        10,
        patient_id="SCPTEST",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="ten",
        study_description="study",
    )
    assoc = open_association(listener.port)

    statuses = [assoc.send_c_store(ds).Status for ds in series]

    assert statuses == [Status.SUCCESS] * 10
    assert state.series_instance_count(series[0].SeriesInstanceUID) == 10


def test_the_same_instance_sent_twice_is_stored_once(
    start_listener: StartListener,
    open_association: Callable[..., Association],
    state: AgentState,
    spool: Spool,
) -> None:
    stored: list[str] = []
    listener = start_listener(on_stored=stored.append)
    ds = instance()
    assoc = open_association(listener.port)

    first, second = assoc.send_c_store(ds), assoc.send_c_store(ds)

    assert (first.Status, second.Status) == (Status.SUCCESS, Status.SUCCESS)
    assert len(state.spooled_instances(ds.SeriesInstanceUID)) == 1
    assert len(stored_files(spool)) == 1
    assert stored == [ds.SeriesInstanceUID]


def test_the_same_sop_instance_with_other_content_replaces_the_spooled_one(
    start_listener: StartListener,
    open_association: Callable[..., Association],
    state: AgentState,
    spool: Spool,
) -> None:
    listener = start_listener()
    original = instance()
    corrected = instance(
        study_uid=original.StudyInstanceUID,
        series_uid=original.SeriesInstanceUID,
        sop_uid=original.SOPInstanceUID,
        series_description="corrected description",
    )
    assoc = open_association(listener.port)

    assert assoc.send_c_store(original).Status == Status.SUCCESS
    (old_row,) = state.spooled_instances(original.SeriesInstanceUID)
    assert assoc.send_c_store(corrected).Status == Status.SUCCESS

    assert state.instance(old_row.id).state is InstanceState.superseded
    (current,) = state.spooled_instances(original.SeriesInstanceUID)
    assert current.path.read_bytes().endswith(encoded_dataset(corrected))
    assert stored_files(spool) == [current.path]


@pytest.mark.parametrize(
    "syntax", [JPEGBaseline8Bit, DeflatedExplicitVRLittleEndian], ids=["jpeg", "deflated"]
)
def test_compressed_syntaxes_are_stored_byte_identical_as_received(
    syntax: str,
    start_listener: StartListener,
    open_association: Callable[..., Association],
    raw_send: Callable[..., Dataset],
    state: AgentState,
) -> None:
    listener = start_listener()
    ds = instance(transfer_syntax=syntax, rows=64, cols=64)
    part10 = encode_part10(ds)
    assoc = open_association(listener.port, [(MRImageStorage, syntax)])

    assert raw_send(assoc, part10).Status == Status.SUCCESS

    (row,) = state.spooled_instances(ds.SeriesInstanceUID)
    written = row.path.read_bytes()
    assert written[dataset_offset(written) :] == part10[dataset_offset(part10) :]
    assert dcmread(row.path).file_meta.TransferSyntaxUID == syntax


def test_garbage_bytes_get_cannot_understand_and_the_listener_keeps_serving(
    start_listener: StartListener,
    open_association: Callable[..., Association],
    raw_send: Callable[..., Dataset],
    state: AgentState,
    spool: Spool,
) -> None:
    listener = start_listener()
    ds = instance()
    part10 = encode_part10(ds)
    garbage = part10[: dataset_offset(part10)] + bytes(range(7, 250)) * 40
    assoc = open_association(listener.port)

    response = raw_send(assoc, garbage)

    assert response.Status == Status.CANNOT_UNDERSTAND
    assert "invalid VR" in response.ErrorComment
    assert stored_files(spool) == []
    assert state.stats().spooled_count == 0
    assoc.release()
    next_assoc = open_association(listener.port)
    assert next_assoc.send_c_store(instance()).Status == Status.SUCCESS


def test_a_truncated_data_set_gets_cannot_understand_and_leaves_no_file(
    start_listener: StartListener,
    open_association: Callable[..., Association],
    raw_send: Callable[..., Dataset],
    spool: Spool,
) -> None:
    listener = start_listener()
    part10 = encode_part10(instance())
    assoc = open_association(listener.port)

    response = raw_send(assoc, part10[: len(part10) - 1000])

    assert response.Status == Status.CANNOT_UNDERSTAND
    assert response.ErrorComment.startswith("truncated")
    assert stored_files(spool) == []
    assert assoc.send_c_store(instance()).Status == Status.SUCCESS


def test_a_data_set_without_series_uid_gets_cannot_understand(
    start_listener: StartListener,
    open_association: Callable[..., Association],
    state: AgentState,
) -> None:
    listener = start_listener()
    ds = instance()
    del ds.SeriesInstanceUID
    assoc = open_association(listener.port)

    response = assoc.send_c_store(ds)

    assert response.Status == Status.CANNOT_UNDERSTAND
    assert "Series UID" in response.ErrorComment
    assert state.stats().spooled_count == 0


def test_a_data_set_of_another_sop_class_gets_does_not_match(
    start_listener: StartListener,
    open_association: Callable[..., Association],
    raw_send: Callable[..., Dataset],
) -> None:
    listener = start_listener()
    ds = instance()  # an MR image, announced below as CT
    announced_as_ct = part10_header(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        implementation_class_uid="1.2.3.4",
        implementation_version_name="TEST",
        source_ae_title=None,
    )
    assoc = open_association(listener.port, [(CTImageStorage, ExplicitVRLittleEndian)])

    response = raw_send(assoc, announced_as_ct + encoded_dataset(ds))

    assert response.Status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_a_spool_below_its_reserve_gets_out_of_resources_and_no_file(
    tmp_path: Path,
    state: AgentState,
    start_listener: StartListener,
    open_association: Callable[..., Association],
) -> None:
    full = Spool(tmp_path / "full-spool", state, reserve_bytes=1 << 62)
    listener = start_listener(spool=full)
    assoc = open_association(listener.port)

    response = assoc.send_c_store(instance())

    assert response.Status == Status.OUT_OF_RESOURCES
    assert stored_files(full) == []
    assert state.stats().spooled_count == 0


def test_a_full_disk_gets_out_of_resources_and_leaves_no_partial_file_then_serves_again(
    tmp_path: Path,
    state: AgentState,
    start_listener: StartListener,
    open_association: Callable[..., Association],
) -> None:
    disk = FillingDisk(free=1 << 20)
    small = Spool(tmp_path / "small-spool", state, append_file=disk.append)
    listener = start_listener(spool=small)
    series = make_series(
        12,
        patient_id="SCPTEST",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="fills the disk",
        study_description="study",
    )
    assoc = open_association(listener.port)

    statuses = [assoc.send_c_store(ds).Status for ds in series]

    assert Status.SUCCESS in statuses
    assert statuses[-1] == Status.OUT_OF_RESOURCES
    rows = state.spooled_instances(series[0].SeriesInstanceUID)
    assert len(rows) == statuses.count(Status.SUCCESS)
    assert stored_files(small) == sorted(row.path for row in rows)

    disk.free = 1 << 30  # space returns: the same association and a new one store again
    assert assoc.send_c_store(instance()).Status == Status.SUCCESS
    assert open_association(listener.port).send_c_store(instance()).Status == Status.SUCCESS


def test_peers_outside_the_allowlist_are_rejected_calling_ae_not_recognised(
    start_listener: StartListener, open_association: Callable[..., Association]
) -> None:
    listener = start_listener(peers=[("SCANNER", "127.0.0.1")])

    # Read off the socket: see tests/support/raw_dicom.py for pynetdicom's requestor race.
    assert rejection(listener.port, calling="STRANGER") == (0x01, 0x01, 0x03)
    assert open_association(listener.port, ae_title="SCANNER").is_established


def test_a_known_ae_title_from_another_host_is_rejected(
    start_listener: StartListener, open_association: Callable[..., Association]
) -> None:
    listener = start_listener(peers=[("SCANNER", "192.0.2.10")])

    assert rejection(listener.port, calling="SCANNER") == (0x01, 0x01, 0x01)


def test_an_unresolvable_peer_host_fails_start_with_a_clear_message(
    spool: Spool, intake_engine: IntakeEngine
) -> None:
    listener = make_listener(
        intake_engine,
        ae_title="CONNECTOR",
        host="127.0.0.1",
        port=0,
        peers=[("SCANNER", "no-such-host.invalid")],
        spool=spool,
    )

    with pytest.raises(ValueError, match="does not resolve"):
        listener.start()


def test_stop_waits_for_an_open_association_and_refuses_new_connections(
    spool: Spool, state: AgentState, intake_engine: IntakeEngine
) -> None:
    listener = make_listener(
        intake_engine, ae_title="CONNECTOR", host="127.0.0.1", port=0, peers=(), spool=spool
    )
    port = listener.start()
    assoc = associate(port)
    stopper = threading.Thread(target=listener.stop, kwargs={"timeout": 60})
    stopper.start()
    try:
        _wait_until_refused(port)
        assert stopper.is_alive()
        ds = instance()
        assert assoc.send_c_store(ds).Status == Status.SUCCESS
    finally:
        assoc.release()
        stopper.join()
    assert len(state.spooled_instances(ds.SeriesInstanceUID)) == 1
    listener.stop(timeout=5)


def test_stop_aborts_associations_still_open_after_the_timeout(
    spool: Spool, intake_engine: IntakeEngine
) -> None:
    listener = make_listener(
        intake_engine, ae_title="CONNECTOR", host="127.0.0.1", port=0, peers=(), spool=spool
    )
    assoc = associate(listener.start())

    listener.stop(timeout=0)

    assoc.join(timeout=30)
    assert assoc.is_aborted


def _wait_until_refused(port: int) -> None:
    """Connect until the listening socket is gone (stop() closes it before it waits)."""
    for _ in range(10_000):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            pass  # caught in the backlog as the listening socket closed; try again
        threading.Event().wait(0.01)
    raise AssertionError(f"port {port} still accepts connections after stop() began")


def test_a_restart_keeps_what_was_acknowledged_and_recognises_a_resend(
    tmp_path: Path, intake_engine: IntakeEngine
) -> None:
    ds = instance()
    state = AgentState.open(tmp_path / "data" / "state.db")
    spool = Spool(tmp_path / "data" / "spool", state)
    listener = make_listener(
        intake_engine, ae_title="CONNECTOR", host="127.0.0.1", port=0, peers=(), spool=spool
    )
    assoc = associate(listener.start())
    assert assoc.send_c_store(ds).Status == Status.SUCCESS
    assoc.release()
    listener.stop(timeout=5)
    state.close()
    # A slot cut short by a crash: its instance was never acknowledged.
    (spool.root / "slots" / "interrupted.dcm").write_bytes(b"half an instance")

    state = AgentState.open(tmp_path / "data" / "state.db")
    spool = Spool(tmp_path / "data" / "spool", state)
    report = spool.recover(identify_spooled)
    listener = make_listener(
        intake_engine, ae_title="CONNECTOR", host="127.0.0.1", port=0, peers=(), spool=spool
    )
    assoc = associate(listener.start())
    try:
        assert assoc.send_c_store(ds).Status == Status.SUCCESS
    finally:
        assoc.release()
        listener.stop(timeout=5)
    (row,) = state.spooled_instances(ds.SeriesInstanceUID)
    state.close()

    assert (report.partial_removed, report.recorded_again, report.missing_files) == (1, 0, 0)
    assert row.path.read_bytes().endswith(encoded_dataset(ds))


def test_intake_logs_carry_no_dicom_values(
    start_listener: StartListener,
    open_association: Callable[..., Association],
    raw_send: Callable[..., Dataset],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    listener = start_listener(on_stored=lambda _series: None)
    ds = instance(
        patient_id="PID-7731-LEAK",
        patient_comments="fw://neuro/secret-project LEAKCOMMENT",
        extra={"PatientName": "LEAKNAME^ALICE"},
    )
    broken = encode_part10(instance(patient_id="PID-8842-LEAK"))
    assoc = open_association(listener.port)

    assert assoc.send_c_store(ds).Status == Status.SUCCESS
    assert assoc.send_c_store(ds).Status == Status.SUCCESS
    assert raw_send(assoc, broken[:-500]).Status == Status.CANNOT_UNDERSTAND
    assoc.release()
    listener.stop(timeout=5)

    printed = caplog.text + "".join(capsys.readouterr())
    assert "association closed" in printed
    for value in (
        "PID-7731",
        "PID-8842",
        "LEAKCOMMENT",
        "LEAKNAME",
        "secret-project",
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        ds.StudyInstanceUID,
    ):
        assert value not in printed
