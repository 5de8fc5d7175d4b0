"""The lean requestor's hand-written response parse against pynetdicom's codec as the oracle
(hypothesis: same fields in), its requests decoded by the codec, and pynetdicom's own encoded
test messages."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dimse_messages import C_ECHO_RSP, C_FIND_RSP, C_GET_RSP, C_MOVE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.tests import encoded_dimse_msg

from agent.dicom.engine.commands import decode_command
from agent.dicom.engine.messages import (
    C_ECHO_RSP_FIELD,
    C_FIND_RSP_FIELD,
    C_GET_RSP_FIELD,
    C_MOVE_RSP_FIELD,
    Response,
    cancel_request,
    command_field,
    decode_identifier,
    echo_request,
    encode_identifier,
    find_request,
    get_request,
    move_request,
    parse_response,
    parse_response_fast,
)

uids = st.builds(
    lambda parts: ".".join(str(p) for p in parts),
    st.lists(st.integers(min_value=0, max_value=10**12), min_size=2, max_size=12),
).filter(lambda uid: len(uid) <= 64)
us = st.integers(min_value=0, max_value=0xFFFF)
statuses = st.sampled_from([0x0000, 0xFF00, 0xFF01, 0xA701, 0xA801, 0xB000, 0xC000, 0xFE00]) | us
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_MESSAGES = {
    C_FIND_RSP_FIELD: (C_FIND, C_FIND_RSP),
    C_MOVE_RSP_FIELD: (C_MOVE, C_MOVE_RSP),
    C_GET_RSP_FIELD: (C_GET, C_GET_RSP),
    C_ECHO_RSP_FIELD: (C_ECHO, C_ECHO_RSP),
}


def oracle_response(
    field: int,
    message_id: int,
    sop_class: str | None,
    status: int,
    counts: tuple[int | None, int | None, int | None, int | None],
    identifier: bool,
) -> bytes:
    """The command set pynetdicom encodes for a C-FIND/C-MOVE/C-GET/C-ECHO response."""
    primitive_class, message_class = _MESSAGES[field]
    primitive = primitive_class()
    primitive.MessageIDBeingRespondedTo = message_id
    if sop_class is not None:
        primitive.AffectedSOPClassUID = sop_class
    primitive.Status = status
    if field in (C_MOVE_RSP_FIELD, C_GET_RSP_FIELD):
        remaining, completed, failed, warning = counts
        primitive.NumberOfRemainingSuboperations = remaining
        primitive.NumberOfCompletedSuboperations = completed
        primitive.NumberOfFailedSuboperations = failed
        primitive.NumberOfWarningSuboperations = warning
    if identifier and field != C_ECHO_RSP_FIELD:
        primitive.Identifier = io.BytesIO(b"\x00")
    message = message_class()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


def codec_response(encoded: bytes) -> Response | None:
    """What pynetdicom's codec reads (the fallback of `parse_response`)."""
    decoded = decode_command(encoded)
    if decoded is None:
        return None
    ds = decoded.dataset

    def number(keyword: str) -> int | None:
        value = ds.get(keyword)
        return value if isinstance(value, int) else None

    sop_class = ds.get("AffectedSOPClassUID")
    return Response(
        field=decoded.field,
        message_id_being_responded_to=number("MessageIDBeingRespondedTo"),
        status=number("Status"),
        has_data_set=decoded.has_data_set,
        affected_sop_class_uid=None if sop_class is None else str(sop_class),
        remaining=number("NumberOfRemainingSuboperations"),
        completed=number("NumberOfCompletedSuboperations"),
        failed=number("NumberOfFailedSuboperations"),
        warning=number("NumberOfWarningSuboperations"),
    )


@_SETTINGS
@given(
    field=st.sampled_from(sorted(_MESSAGES)),
    message_id=us,
    sop_class=st.none() | uids,
    status=statuses,
    counts=st.tuples(st.none() | us, st.none() | us, st.none() | us, st.none() | us),
    identifier=st.booleans(),
)
def test_the_response_parse_reads_what_pynetdicom_encodes(
    field: int,
    message_id: int,
    sop_class: str | None,
    status: int,
    counts: tuple[int | None, int | None, int | None, int | None],
    identifier: bool,
) -> None:
    encoded = oracle_response(field, message_id, sop_class, status, counts, identifier)

    parsed = parse_response_fast(encoded)

    assert parsed is not None
    assert parsed == codec_response(encoded)
    assert parsed.field == field
    assert parsed.message_id_being_responded_to == message_id
    assert parsed.status == status
    assert parsed.affected_sop_class_uid == sop_class
    assert parsed.has_data_set == (identifier and field != C_ECHO_RSP_FIELD)
    if field in (C_MOVE_RSP_FIELD, C_GET_RSP_FIELD):
        assert (parsed.remaining, parsed.completed, parsed.failed, parsed.warning) == counts
    assert command_field(encoded) == field


@_SETTINGS
@given(data=st.binary(max_size=300), seed=st.data())
def test_on_any_bytes_the_response_parse_agrees_with_the_codec_or_defers_to_it(
    data: bytes, seed: st.DataObject
) -> None:
    # Mutations of a valid command set reach far deeper than random bytes alone.
    valid = oracle_response(
        C_MOVE_RSP_FIELD, 7, "1.2.840.10008.5.1.4.1.2.2.2", 0xFF00, (3, 2, 1, 0), False
    )
    position = seed.draw(st.integers(min_value=0, max_value=len(valid)))
    mutated = valid[:position] + data[:8] + valid[position + len(data[:8]) :]
    for candidate in (data, mutated):
        parsed = parse_response_fast(candidate)
        if parsed is None:
            continue  # the requestor asks the codec, whatever it says
        assert parsed == codec_response(candidate)


def test_a_response_outside_the_fast_path_is_read_by_the_codec() -> None:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 3
    primitive.Status = 0xC000
    primitive.ErrorComment = "no such key"
    primitive.OffendingElement = [0x00100010]
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)
    encoded = bytes(encode(message.command_set, True, True))
    # An element the fast path does not know (Affected SOP Instance UID twice over is not
    # possible, so: a private-free but unexpected one, Priority) sends it to the codec.
    odd = encoded + b"\x00\x00\x00\x07\x02\x00\x00\x00\x00\x00"
    odd = _with_group_length(odd)

    assert parse_response_fast(encoded) == codec_response(encoded)
    assert parse_response_fast(odd) is None
    read = parse_response(odd)
    assert read is not None
    assert (read.field, read.message_id_being_responded_to, read.status) == (
        C_FIND_RSP_FIELD,
        3,
        0xC000,
    )


def test_pynetdicoms_own_encoded_response_messages() -> None:
    for field, encoded in (
        (C_FIND_RSP_FIELD, encoded_dimse_msg.c_find_rsp_cmd),
        (C_MOVE_RSP_FIELD, encoded_dimse_msg.c_move_rsp_cmd),
        (C_GET_RSP_FIELD, encoded_dimse_msg.c_get_rsp_cmd),
        (C_ECHO_RSP_FIELD, encoded_dimse_msg.c_echo_rsp_cmd),
    ):
        command = encoded[1:]  # after the message control header
        parsed = parse_response(command)
        assert parsed is not None
        assert parsed == codec_response(command)
        assert parsed.field == field


def test_requests_decode_in_the_codec_with_their_fields() -> None:
    find = decode_command(find_request(5, "1.2.840.10008.5.1.4.1.2.2.1"))
    move = decode_command(move_request(6, "1.2.840.10008.5.1.4.1.2.2.2", "CONNECTOR"))
    get = decode_command(get_request(7, "1.2.840.10008.5.1.4.1.2.2.3"))
    echo = decode_command(echo_request(8, "1.2.840.10008.1.1"))
    cancel = decode_command(cancel_request(6))

    commands = [find, move, get, echo, cancel]
    assert None not in commands
    assert find is not None
    assert move is not None
    assert get is not None
    assert cancel is not None
    assert [(c.field, c.has_data_set) for c in commands if c is not None] == [
        (0x0020, True),
        (0x0021, True),
        (0x0010, True),
        (0x0030, False),
        (0x0FFF, False),
    ]
    assert int(find.dataset.MessageID) == 5
    assert str(move.dataset.MoveDestination).strip() == "CONNECTOR"
    assert int(cancel.dataset.MessageIDBeingRespondedTo) == 6
    assert str(get.dataset.AffectedSOPClassUID) == "1.2.840.10008.5.1.4.1.2.2.3"


@_SETTINGS
@given(
    syntax=st.sampled_from(
        [
            ImplicitVRLittleEndian,
            ExplicitVRLittleEndian,
            DeflatedExplicitVRLittleEndian,
            ExplicitVRBigEndian,
        ]
    ),
    study=uids,
    count=st.none() | st.integers(min_value=0, max_value=10**6),
)
def test_identifiers_round_trip_in_every_syntax_the_requestor_proposes(
    syntax: str, study: str, count: int | None
) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study
    identifier.NumberOfSeriesRelatedInstances = "" if count is None else count

    decoded = decode_identifier(encode_identifier(identifier, syntax), syntax)

    assert decoded.StudyInstanceUID == study
    assert decoded.QueryRetrieveLevel == "SERIES"
    # pydicom reads an empty element back as None
    assert decoded.NumberOfSeriesRelatedInstances == count


def _with_group_length(encoded: bytes) -> bytes:
    body = encoded[12:]
    return encoded[:8] + len(body).to_bytes(4, "little") + body
