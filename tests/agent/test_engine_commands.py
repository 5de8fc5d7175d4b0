"""The lean engine's hand-written hot path against pynetdicom's codec as the oracle: the
C-STORE-RQ parse (same fields in), the C-STORE-RSP encode and the P-DATA-TF framing (same bytes
out), with hypothesis, plus pynetdicom's own encoded test messages."""

from __future__ import annotations

import io
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.tests import encoded_dimse_msg

from agent.dicom.engine.commands import (
    StoreRequest,
    decode_command,
    parse_store_request,
    store_response,
)
from agent.dicom.engine.pdu import p_data_pdus

uids = st.builds(
    lambda parts: ".".join(str(p) for p in parts),
    st.lists(st.integers(min_value=0, max_value=10**12), min_size=2, max_size=12),
).filter(lambda uid: len(uid) <= 64)
ae_titles = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
    min_size=1,
    max_size=16,
)
us = st.integers(min_value=0, max_value=0xFFFF)
comments = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"),
    min_size=1,
    max_size=64,
).filter(lambda text: text.strip(" ") != "")
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def oracle_store_request(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    priority: int,
    originator: str | None,
    originator_id: int | None,
) -> bytes:
    """The command set pynetdicom encodes for a C-STORE-RQ."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = priority
    primitive.DataSet = io.BytesIO(b"\x00")
    if originator is not None:
        primitive.MoveOriginatorApplicationEntityTitle = originator
    if originator_id is not None:
        primitive.MoveOriginatorMessageID = originator_id
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


@_SETTINGS
@given(
    message_id=us,
    sop_class=uids,
    sop_instance=uids,
    priority=st.sampled_from([0, 1, 2]),
    originator=st.none() | ae_titles,
    originator_id=st.none() | us,
)
def test_the_store_request_parse_reads_what_pynetdicom_encodes(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    priority: int,
    originator: str | None,
    originator_id: int | None,
) -> None:
    encoded = oracle_store_request(
        message_id, sop_class, sop_instance, priority, originator, originator_id
    )

    parsed = parse_store_request(encoded)
    decoded = decode_command(encoded)

    assert parsed == StoreRequest(
        message_id=message_id,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        priority=priority,
        has_data_set=True,
        move_originator_ae_title=None if originator is None else originator.strip(),
        move_originator_message_id=originator_id,
    )
    assert decoded is not None
    assert decoded.store_request() == parsed


@_SETTINGS
@given(data=st.binary(max_size=300), seed=st.data())
def test_on_any_bytes_the_parse_agrees_with_the_codec_or_defers_to_it(
    data: bytes, seed: st.DataObject
) -> None:
    # Mutations of a valid command set reach far deeper than random bytes alone.
    valid = oracle_store_request(7, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4", 0, None, None)
    position = seed.draw(st.integers(min_value=0, max_value=len(valid)))
    mutated = valid[:position] + data[:8] + valid[position + len(data[:8]) :]
    for candidate in (data, mutated):
        parsed = parse_store_request(candidate)
        if parsed is None:
            continue  # the engine asks the codec, whatever it says
        decoded = decode_command(candidate)
        assert decoded is not None
        assert decoded.store_request() == parsed


@_SETTINGS
@given(
    message_id=us,
    sop_class=uids,
    sop_instance=uids,
    status=st.sampled_from([0x0000, 0xA700, 0xA900, 0xC000, 0x0110]) | us,
    comment=st.none() | comments,
)
def test_the_store_response_is_byte_for_byte_what_pynetdicom_encodes(
    message_id: int, sop_class: str, sop_instance: str, status: int, comment: str | None
) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Status = status
    if comment is not None:
        primitive.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)

    ours = store_response(
        message_id=message_id,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        status=status,
        error_comment=comment,
    )

    assert ours == bytes(encode(message.command_set, True, True))


def test_a_response_outside_the_fast_path_still_encodes_through_the_codec() -> None:
    encoded = store_response(
        message_id=1,
        sop_class_uid="1.2.3",
        sop_instance_uid="1.2.4",
        status=0xC000,
        error_comment="a\\b",  # a backslash is a value delimiter: the codec decides
    )
    decoded = decode_command(encoded)

    assert decoded is not None
    assert decoded.field == 0x8001
    assert int(decoded.dataset.Status) == 0xC000


def test_pynetdicoms_own_encoded_store_messages() -> None:
    request = encoded_dimse_msg.c_store_rq_cmd[1:]  # after the message control header
    response = encoded_dimse_msg.c_store_rsp_cmd[1:]

    assert parse_store_request(request) == StoreRequest(
        message_id=7,
        sop_class_uid="1.1.1",
        sop_instance_uid="1.2.1",
        priority=2,
        has_data_set=True,
        move_originator_ae_title="UNITTEST",
        move_originator_message_id=3,
    )
    assert (
        store_response(
            message_id=5,
            sop_class_uid="1.2.4.10",
            sop_instance_uid="1.2.4.5.7.8",
            status=0,
            error_comment=None,
        )
        == response
    )
    # A C-ECHO-RQ is not for the fast path.
    assert parse_store_request(encoded_dimse_msg.c_echo_rq_cmd[1:]) is None


@_SETTINGS
@given(
    data=st.binary(min_size=0, max_size=3000),
    context_id=st.integers(min_value=1, max_value=255).filter(lambda n: n % 2),
    maximum_pdu=st.sampled_from([0, 7, 16, 100, 1024, 16384]),
    command=st.booleans(),
)
def test_p_data_framing_matches_pynetdicom(
    data: bytes, context_id: int, maximum_pdu: int, command: bool
) -> None:
    ours = list(p_data_pdus(context_id, data, command=command, maximum_pdu=maximum_pdu))

    fragments: list[tuple[int, bytes]] = []
    for pdu in ours:
        decoded = P_DATA_TF()
        decoded.decode(pdu)
        assert struct.unpack(">L", pdu[2:6])[0] == len(pdu) - 6
        fragments += decoded.to_primitive().presentation_data_value_list
    # Each PDU carries one PDV; pynetdicom's encoding of the same fragments is the same bytes.
    for pdu, (pdv_context, value) in zip(ours, fragments, strict=True):
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[pdv_context, value]]
        encoded = P_DATA_TF()
        encoded.from_primitive(primitive)
        assert bytes(encoded.encode()) == pdu
    assert all(pdv_context == context_id for pdv_context, _ in fragments)
    assert b"".join(value[1:] for _, value in fragments) == data
    controls = [value[0] for _, value in fragments]
    kind = 0x01 if command else 0x00
    assert controls == [kind] * (len(controls) - 1) + [kind | 0x02]
    if maximum_pdu:
        assert all(len(pdu) - 6 <= max(maximum_pdu, 7) for pdu in ours)
