"""The acceptor's state machine on raw sockets, on both intake engines: pynetdicom's own encoded
PDUs replayed, and protocol errors (a P-DATA before the association, a PDV for a context not
accepted, a truncated PDU, an unknown PDU type, an A-ABORT in the middle of an instance) end in
an abort or a close, never a crash, and the next association is served."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.tests import encoded_pdu_items

from agent.dicom.engine.commands import decode_command, parse_store_request
from agent.dicom.listeners import IntakeEngine, Listener
from agent.dicom.timeouts import ScpTimeouts
from agent.state import AgentState
from tests.support.dicom_factory import encoded_dataset, make_instance
from tests.support.raw_dicom import (
    connect,
    established,
    p_data,
    read_pdu,
    store_command,
)
from tests.support.scu import send_datasets

StartListener = Callable[..., Listener]
_WAIT_SECONDS = 10.0
_ASSOCIATE_AC, _ASSOCIATE_RJ, _P_DATA, _RELEASE_RP, _ABORT = 0x02, 0x03, 0x04, 0x06, 0x07


def the_next_association_is_served(port: int, state: AgentState) -> None:
    ds = make_instance(
        patient_id="PROTOCOL",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="after an error",
        study_description="protocol",
    )
    assert send_datasets(port, [ds]) == [0]
    assert [row.sop_instance_uid for row in state.spooled_instances(ds.SeriesInstanceUID)] == [
        ds.SOPInstanceUID
    ]


@pytest.mark.parametrize(
    "fixture",
    [
        "a_associate_rq",
        "a_associate_rq_user_async",
        "a_associate_rq_role",
        "a_associate_rq_user_id_user_pass",
        "a_associate_rq_user_id_ext_neg",
    ],
)
def test_pynetdicoms_encoded_association_requests_are_accepted_and_released(
    start_listener: StartListener, fixture: str
) -> None:
    listener = start_listener()
    with connect(listener.port) as sock:
        sock.sendall(getattr(encoded_pdu_items, fixture))
        answer = read_pdu(sock)
        assert answer is not None
        assert answer[0] == _ASSOCIATE_AC
        sock.sendall(encoded_pdu_items.a_release_rq)
        assert read_pdu(sock) == (_RELEASE_RP, b"\x00\x00\x00\x00")


def test_an_associate_ac_sent_to_the_acceptor_is_aborted(start_listener: StartListener) -> None:
    # pynetdicom's fixture of this name is an A-ASSOCIATE-AC (type 0x02), whatever it is called.
    fixture = encoded_pdu_items.a_associate_rq_com_ext_neg
    assert fixture[0] == _ASSOCIATE_AC
    listener = start_listener()
    with connect(listener.port) as sock:
        sock.sendall(fixture)
        answer = read_pdu(sock)
        assert answer is None or answer[0] == _ABORT


def test_pynetdicoms_encoded_echo_is_answered_success(start_listener: StartListener) -> None:
    listener = start_listener()
    with connect(listener.port) as sock:
        sock.sendall(encoded_pdu_items.a_associate_rq)
        assert (read_pdu(sock) or (0, b""))[0] == _ASSOCIATE_AC
        sock.sendall(encoded_pdu_items.p_data_tf_rq)
        answer = read_pdu(sock)
        assert answer is not None
        assert answer[0] == _P_DATA
        command = decode_command(answer[1][6:])
        assert command is not None
        assert command.field == 0x8030
        assert int(command.dataset.Status) == 0x0000
        sock.sendall(encoded_pdu_items.a_release_rq)
        assert read_pdu(sock) == (_RELEASE_RP, b"\x00\x00\x00\x00")


def test_a_p_data_before_the_association_is_aborted_and_the_next_is_served(
    start_listener: StartListener, state: AgentState
) -> None:
    listener = start_listener()
    with connect(listener.port) as sock:
        sock.sendall(encoded_pdu_items.p_data_tf_rq)
        answer = read_pdu(sock)
        assert answer is None or answer[0] == _ABORT

    the_next_association_is_served(listener.port, state)


def test_a_pdv_for_a_context_not_accepted_is_aborted_and_the_next_is_served(
    start_listener: StartListener, state: AgentState, intake_engine: IntakeEngine
) -> None:
    listener = start_listener()
    with established(listener.port) as sock:
        sock.sendall(p_data(99, 0x03, store_command(MRImageStorage, generate_uid())))
        if intake_engine == "lean":
            answer = read_pdu(sock)
            assert answer is not None
            assert answer[0] == _ABORT
        # pynetdicom's own engine drops such a PDV without a word; the association stays.

    the_next_association_is_served(listener.port, state)


def test_a_truncated_pdu_ends_the_connection_and_the_next_is_served(
    start_listener: StartListener, state: AgentState
) -> None:
    listener = start_listener()
    with established(listener.port) as sock:
        whole = p_data(1, 0x03, store_command(MRImageStorage, generate_uid()))
        sock.sendall(whole[: len(whole) // 2])
        sock.shutdown(socket.SHUT_WR)
        answer = read_pdu(sock)
        assert answer is None or answer[0] == _ABORT

    the_next_association_is_served(listener.port, state)


def test_an_unknown_pdu_type_is_aborted_and_the_next_is_served(
    start_listener: StartListener, state: AgentState
) -> None:
    listener = start_listener()
    with established(listener.port) as sock:
        sock.sendall(b"\x0a\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        answer = read_pdu(sock)
        assert answer is None or answer[0] == _ABORT

    the_next_association_is_served(listener.port, state)


def test_an_abort_in_the_middle_of_an_instance_stores_nothing_and_the_next_is_served(
    start_listener: StartListener, state: AgentState
) -> None:
    listener = start_listener()
    ds = make_instance(
        patient_id="PROTOCOL",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="aborted",
        study_description="protocol",
    )
    encoded = encoded_dataset(ds)
    with established(listener.port) as sock:
        sock.sendall(p_data(1, 0x03, store_command(MRImageStorage, ds.SOPInstanceUID)))
        sock.sendall(p_data(1, 0x00, encoded[: len(encoded) // 2]))  # not the last fragment
        sock.sendall(encoded_pdu_items.a_abort)
        assert read_pdu(sock) is None  # the SCP closes without answering

    the_next_association_is_served(listener.port, state)
    assert state.spooled_instances(ds.SeriesInstanceUID) == []


def test_a_store_in_many_small_fragments_is_answered_once_durable(
    start_listener: StartListener, state: AgentState
) -> None:
    listener = start_listener()
    ds = make_instance(
        patient_id="PROTOCOL",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="fragments",
        study_description="protocol",
    )
    encoded = encoded_dataset(ds)
    with established(listener.port) as sock:
        command = store_command(MRImageStorage, ds.SOPInstanceUID, message_id=9)
        sock.sendall(p_data(1, 0x01, command[:10]) + p_data(1, 0x03, command[10:]))
        pieces = [encoded[offset : offset + 997] for offset in range(0, len(encoded), 997)]
        for index, piece in enumerate(pieces):
            sock.sendall(p_data(1, 0x02 if index == len(pieces) - 1 else 0x00, piece))
        answer = read_pdu(sock)
        assert answer is not None
        assert answer[0] == _P_DATA
        response = decode_command(answer[1][6:])
        assert response is not None
        assert int(response.dataset.Status) == 0x0000
        assert int(response.dataset.MessageIDBeingRespondedTo) == 9
        sock.sendall(encoded_pdu_items.a_release_rq)
        assert read_pdu(sock) == (_RELEASE_RP, b"\x00\x00\x00\x00")

    (row,) = state.spooled_instances(ds.SeriesInstanceUID)
    assert row.path.read_bytes().endswith(encoded)


def test_a_pdu_longer_than_allowed_closes_the_connection_and_the_next_is_served(
    start_listener: StartListener, state: AgentState
) -> None:
    listener = start_listener()
    with established(listener.port) as sock:
        sock.sendall(struct.pack(">BxL", _P_DATA, 1 << 30) + b"\x00" * 64)  # claims 1 GiB
        answer = read_pdu(sock)
        assert answer is None or answer[0] == _ABORT

    the_next_association_is_served(listener.port, state)


def test_a_peer_stalling_mid_pdu_is_closed_after_the_network_timeout(
    start_listener: StartListener, state: AgentState
) -> None:
    listener = start_listener(timeouts=ScpTimeouts(artim=5.0, dimse=0.5, network=0.5))
    with established(listener.port) as sock:
        whole = p_data(1, 0x03, store_command(MRImageStorage, generate_uid()))
        sock.sendall(whole[:9])  # and then nothing
        answer = read_pdu(sock)  # the SCP gives up long before our own wait
        assert answer is None or answer[0] == _ABORT

    the_next_association_is_served(listener.port, state)


def test_a_store_command_outside_the_fast_path_is_stored_through_the_codec(
    start_listener: StartListener, state: AgentState
) -> None:
    # A Priority element of odd length is no command set the fast path parses; pynetdicom's
    # codec reads it, and the instance is stored as any other.
    listener = start_listener()
    ds = make_instance(
        patient_id="PROTOCOL",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="codec path",
        study_description="protocol",
    )
    command = store_command(MRImageStorage, ds.SOPInstanceUID, message_id=5)
    # Drop the group length (optional) and add Move Originator AE Title, padded with a space.
    command = command[12:] + struct.pack("<HHL", 0, 0x1030, 8) + b"PACS    "
    assert parse_store_request(command) is not None  # still fast: now break it
    unusual = command + struct.pack("<HHL", 0, 0x1031, 4) + b"\x01\x00\x00\x00"  # US of 4
    assert parse_store_request(unusual) is None
    assert decode_command(unusual) is not None
    with established(listener.port) as sock:
        sock.sendall(p_data(1, 0x03, unusual))
        sock.sendall(p_data(1, 0x02, encoded_dataset(ds)))
        answer = read_pdu(sock)
        assert answer is not None
        response = decode_command(answer[1][6:])
        assert response is not None
        assert int(response.dataset.Status) == 0x0000
        sock.sendall(encoded_pdu_items.a_release_rq)
        assert read_pdu(sock) == (_RELEASE_RP, b"\x00\x00\x00\x00")

    assert len(state.spooled_instances(ds.SeriesInstanceUID)) == 1


@pytest.mark.parametrize(
    "fixture", ["a_associate_rq_user_id_user_pass", "a_associate_rq_user_id_ext_neg"]
)
def test_user_identity_and_extended_negotiation_get_no_reply_items(
    start_listener: StartListener, fixture: str
) -> None:
    # Accepted without a user identity response (0x59) and without accepting SOP Class
    # Extended Negotiation (0x56) or an asynchronous operations window (0x53): both engines
    # answer exactly as pynetdicom's AE does without handlers.
    listener = start_listener()
    with connect(listener.port) as sock:
        sock.sendall(getattr(encoded_pdu_items, fixture))
        answer = read_pdu(sock)
        assert answer is not None
        assert answer[0] == _ASSOCIATE_AC
        accept = A_ASSOCIATE_AC()
        accept.decode(struct.pack(">BxL", _ASSOCIATE_AC, len(answer[1])) + answer[1])
        kinds = {type(item).__name__ for item in accept.to_primitive().user_information}
        assert kinds <= {
            "MaximumLengthNotification",
            "ImplementationClassUIDNotification",
            "ImplementationVersionNameNotification",
        }
        sock.sendall(encoded_pdu_items.a_release_rq)
        assert read_pdu(sock) == (_RELEASE_RP, b"\x00\x00\x00\x00")
