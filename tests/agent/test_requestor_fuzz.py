"""The lean requestor on arbitrary answers: whatever bytes a peer sends back to a C-ECHO, a
C-FIND or a C-GET (random, or a valid answer mutated), the requestor ends in a
`RequestorError` or a result, never another exception or a hang. A socket pair stands in for
the connection; the peer's bytes are written and its end closed before the request is read."""

from __future__ import annotations

import socket
import struct
from io import BytesIO

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom.dimse_messages import C_ECHO_RSP, C_FIND_RSP, C_GET_RSP, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_STORE
from pynetdicom.dsutils import encode

from agent.dicom.engine.commands import StoreRequest
from agent.dicom.engine.pdu import Reader, p_data_pdus
from agent.dicom.engine.requestor import Requestor, RequestorError

_VERIFICATION = "1.2.840.10008.1.1"
_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_GET = "1.2.840.10008.5.1.4.1.2.2.3"
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def requestor_answered_with(answer: bytes) -> tuple[Requestor, socket.socket]:
    """A requestor whose peer has sent `answer` and shut its sending side; and the peer's
    socket, kept open so the request can still be written."""
    ours, theirs = socket.socketpair()
    theirs.sendall(answer)
    theirs.shutdown(socket.SHUT_WR)
    ours.settimeout(5)

    def store(*_: object) -> tuple[int, str | None]:
        return 0x0000, None

    requestor = Requestor(
        ours,
        Reader(ours),
        timeout=5,
        maximum_pdu=16384,
        peer_maximum_pdu=16384,
        accepted={
            1: (_VERIFICATION, ImplicitVRLittleEndian),
            3: (_FIND, ImplicitVRLittleEndian),
            5: (_GET, ImplicitVRLittleEndian),
            7: (str(MRImageStorage), ExplicitVRLittleEndian),
        },
        store=store,
    )
    return requestor, theirs


def valid_echo_answer() -> bytes:
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.AffectedSOPClassUID = _VERIFICATION
    primitive.Status = 0x0000
    message = C_ECHO_RSP()
    message.primitive_to_message(primitive)
    command = bytes(encode(message.command_set, True, True))
    return b"".join(p_data_pdus(1, command, command=True, maximum_pdu=16384))


def valid_find_answer() -> bytes:
    found = Dataset()
    found.StudyInstanceUID = "1.2.3"
    identifier = bytes(encode(found, True, True))
    parts = []
    for status, with_identifier in ((0xFF00, True), (0x0000, False)):
        primitive = C_FIND()
        primitive.MessageIDBeingRespondedTo = 1
        primitive.AffectedSOPClassUID = _FIND
        primitive.Status = status
        if with_identifier:
            primitive.Identifier = BytesIO(identifier)
        message = C_FIND_RSP()
        message.primitive_to_message(primitive)
        command = bytes(encode(message.command_set, True, True))
        parts += p_data_pdus(3, command, command=True, maximum_pdu=64)
        if with_identifier:
            parts += p_data_pdus(3, identifier, command=False, maximum_pdu=64)
    return b"".join(parts)


def valid_get_answer() -> bytes:
    """A C-STORE-RQ with its data set (a sub-operation), then the final C-GET-RSP."""
    instance = Dataset()
    instance.SOPClassUID = str(MRImageStorage)
    instance.SOPInstanceUID = "1.2.3.4"
    instance.StudyInstanceUID = "1.2.3"
    instance.SeriesInstanceUID = "1.2.3.5"
    data_set = bytes(encode(instance, False, True))
    store = C_STORE()
    store.MessageID = 9
    store.AffectedSOPClassUID = str(MRImageStorage)
    store.AffectedSOPInstanceUID = "1.2.3.4"
    store.Priority = 0
    store.DataSet = BytesIO(data_set)
    store_message = C_STORE_RQ()
    store_message.primitive_to_message(store)
    final = C_GET()
    final.MessageIDBeingRespondedTo = 1
    final.AffectedSOPClassUID = _GET
    final.Status = 0x0000
    final.NumberOfCompletedSuboperations = 1
    final.NumberOfFailedSuboperations = 0
    final.NumberOfWarningSuboperations = 0
    final_message = C_GET_RSP()
    final_message.primitive_to_message(final)
    parts = [
        *p_data_pdus(
            7, bytes(encode(store_message.command_set, True, True)), command=True, maximum_pdu=64
        ),
        *p_data_pdus(7, data_set, command=False, maximum_pdu=64),
        *p_data_pdus(
            5, bytes(encode(final_message.command_set, True, True)), command=True, maximum_pdu=16384
        ),
    ]
    return b"".join(parts)


def mutate(valid: bytes, data: bytes, position: int) -> bytes:
    return valid[:position] + data + valid[position + len(data) :]


def run(operation: str, answer: bytes) -> object:
    """The operation's result (the status, or the responses), None when it failed cleanly."""
    requestor, peer = requestor_answered_with(answer)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    try:
        if operation == "echo":
            return requestor.echo(_VERIFICATION)
        if operation == "find":
            return [(r.status, found) for r, found in requestor.find(query, _FIND)]
        return [(r.status, r.completed) for r, _ in requestor.get(query, _GET)]
    except RequestorError:
        return None
    finally:
        requestor.abort()
        peer.close()


def test_the_unmutated_answers_are_read_in_full() -> None:
    assert run("echo", valid_echo_answer()) == 0x0000
    found = run("find", valid_find_answer())
    assert isinstance(found, list)
    assert [status for status, _ in found] == [0xFF00, 0x0000]
    assert found[0][1].StudyInstanceUID == "1.2.3"
    assert run("get", valid_get_answer()) == [(0x0000, 1)]


@_SETTINGS
@given(
    operation=st.sampled_from(["echo", "find", "get"]),
    data=st.binary(max_size=64),
    position=st.integers(min_value=0, max_value=400),
    junk=st.binary(max_size=200),
)
def test_any_answer_ends_in_a_requestor_error_or_a_result(
    operation: str, data: bytes, position: int, junk: bytes
) -> None:
    valid = {"echo": valid_echo_answer, "find": valid_find_answer, "get": valid_get_answer}[
        operation
    ]()
    for answer in (junk, mutate(valid, data, position % (len(valid) + 1))):
        run(operation, answer)


def test_a_c_store_of_a_c_get_cut_short_ends_in_a_requestor_error() -> None:
    request = StoreRequest(1, str(MRImageStorage), "1.2.3.4", 0, True)
    command = (
        struct.pack("<HHL", 0, 0x0002, 26)
        + str(MRImageStorage).encode()
        + struct.pack("<HHLH", 0, 0x0100, 2, 0x0001)
        + struct.pack("<HHLH", 0, 0x0110, 2, request.message_id)
        + struct.pack("<HHLH", 0, 0x0700, 2, 0)
        + struct.pack("<HHLH", 0, 0x0800, 2, 0x0001)
        + struct.pack("<HHL", 0, 0x1000, 8)
        + b"1.2.3.4\x00"
    )
    answer = b"".join(p_data_pdus(7, command, command=True, maximum_pdu=16384))
    answer += b"".join(p_data_pdus(7, b"\x08\x00" * 100, command=False, maximum_pdu=64))[:-30]

    run("get", answer)  # raises nothing but a RequestorError (swallowed by `run`)
