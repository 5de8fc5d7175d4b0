"""DIMSE messages of the requestor: its requests encoded with pynetdicom's DIMSE message classes,
the responses it reads parsed directly (the per-response hot path), pynetdicom's codec for the
rest.

A C-MOVE or C-GET answers every sub-operation with a pending response, and a C-FIND every match:
hundreds per series or per query round. Building a pydicom Dataset and a pynetdicom message for
each costs more than the rest of reading it, so a response command set of the usual elements is
read here byte by byte (group 0000, implicit VR little endian, PS3.7 6.3.1 and 9.3). Anything
else (an element the fast path does not know, an odd length, a non-ASCII UID) returns None from
`parse_response_fast` and `parse_response` asks pynetdicom's codec, which stays the reference:
`tests/agent/test_engine_messages.py` checks with hypothesis that both read the same fields.
Requests go out once per operation, so pynetdicom's message classes encode them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dimse_messages import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_FIND_RQ,
    C_GET_RQ,
    C_MOVE_RQ,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode

from agent.dicom.engine.commands import decode_command

__all__ = [
    "C_ECHO_RSP_FIELD",
    "C_FIND_RSP_FIELD",
    "C_GET_RSP_FIELD",
    "C_MOVE_RSP_FIELD",
    "C_STORE_RQ_FIELD",
    "PENDING",
    "Response",
    "cancel_request",
    "command_field",
    "decode_identifier",
    "echo_request",
    "encode_identifier",
    "find_request",
    "get_request",
    "move_request",
    "parse_response",
    "parse_response_fast",
]

C_STORE_RQ_FIELD = 0x0001
C_GET_RSP_FIELD = 0x8010
C_FIND_RSP_FIELD = 0x8020
C_MOVE_RSP_FIELD = 0x8021
C_ECHO_RSP_FIELD = 0x8030
PENDING = frozenset({0xFF00, 0xFF01})
_NO_DATA_SET = 0x0101
_MEDIUM_PRIORITY = 0x0000
_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
_UID_LIMIT = 64

# The elements of a C-FIND/C-GET/C-MOVE/C-ECHO response (PS3.7 Tables 9.3-2, -4, -6, 9.3-13)
# the fast path reads, with their VR. Error Comment and Offending Element are skipped: the
# agent never shows a peer's free text, and they come only with failures.
_RESPONSE_ELEMENTS = {
    0x0000: "UL",  # Command Group Length
    0x0002: "UI",  # Affected SOP Class UID
    0x0100: "US",  # Command Field
    0x0120: "US",  # Message ID Being Responded To
    0x0800: "US",  # Command Data Set Type
    0x0900: "US",  # Status
    0x0901: "AT",  # Offending Element
    0x0902: "LO",  # Error Comment
    0x0903: "US",  # Error ID
    0x1000: "UI",  # Affected SOP Instance UID
    0x1020: "US",  # Number of Remaining Sub-operations
    0x1021: "US",  # Number of Completed Sub-operations
    0x1022: "US",  # Number of Failed Sub-operations
    0x1023: "US",  # Number of Warning Sub-operations
}
_KEYWORDS = {
    "remaining": "NumberOfRemainingSuboperations",
    "completed": "NumberOfCompletedSuboperations",
    "failed": "NumberOfFailedSuboperations",
    "warning": "NumberOfWarningSuboperations",
}


@dataclass(frozen=True, slots=True)
class Response:
    """The fields of a DIMSE response the requestor uses; counts None when absent."""

    field: int
    message_id_being_responded_to: int | None
    status: int | None
    has_data_set: bool
    affected_sop_class_uid: str | None = None
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None

    @property
    def pending(self) -> bool:
        """A pending status: more responses follow."""
        return self.status in PENDING


def command_field(encoded: bytes) -> int | None:
    """The Command Field of an encoded command set, found without decoding the rest; None when
    the elements before it do not walk cleanly."""
    offset, end = 0, len(encoded)
    while offset + 8 <= end:
        group, element, length = _ELEMENT.unpack_from(encoded, offset)
        offset += 8
        if group != 0 or offset + length > end:
            return None
        if element == 0x0100:
            return _US.unpack_from(encoded, offset)[0] if length == 2 else None
        offset += length
    return None


def parse_response(encoded: bytes) -> Response | None:
    """A response command set: directly when it is of the usual shape, else through
    pynetdicom's codec; None when it does not decode or lacks Command Field or Status."""
    fast = parse_response_fast(encoded)
    if fast is not None:
        return fast
    decoded = decode_command(encoded)
    if decoded is None:
        return None
    ds = decoded.dataset
    sop_class = ds.get("AffectedSOPClassUID")
    try:
        counts = {name: _single_int(ds.get(keyword)) for name, keyword in _KEYWORDS.items()}
        return Response(
            field=decoded.field,
            message_id_being_responded_to=_single_int(ds.get("MessageIDBeingRespondedTo")),
            status=_single_int(ds.get("Status")),
            has_data_set=decoded.has_data_set,
            affected_sop_class_uid=None if sop_class is None else str(sop_class),
            **counts,
        )
    except Exception:  # pydicom converts values lazily and raises many kinds
        return None


def parse_response_fast(encoded: bytes | bytearray | memoryview) -> Response | None:
    """Parse a response command set directly; None for anything unusual."""
    data = memoryview(encoded).cast("B")
    values: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            return None
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0 or element in values or offset + length > end:
            return None
        vr = _RESPONSE_ELEMENTS.get(element)
        if vr is None or (vr == "US" and length != 2) or (vr == "UL" and length != 4):
            return None
        values[element] = bytes(data[offset : offset + length])
        offset += length
    group_length = values.get(0x0000)
    if group_length is not None and _UL.unpack(group_length)[0] != end - 12:
        return None
    if 0x0100 not in values or 0x0800 not in values:
        return None
    sop_class: str | None = None
    if 0x0002 in values:
        sop_class = _uid(values[0x0002])
        if sop_class is None:
            return None

    def us(element: int) -> int | None:
        value = values.get(element)
        return None if value is None else int(_US.unpack(value)[0])

    return Response(
        field=int(_US.unpack(values[0x0100])[0]),
        message_id_being_responded_to=us(0x0120),
        status=us(0x0900),
        has_data_set=_US.unpack(values[0x0800])[0] != _NO_DATA_SET,
        affected_sop_class_uid=sop_class,
        remaining=us(0x1020),
        completed=us(0x1021),
        failed=us(0x1022),
        warning=us(0x1023),
    )


def echo_request(message_id: int, sop_class_uid: str) -> bytes:
    """The command set of a C-ECHO-RQ."""
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    return _encoded(C_ECHO_RQ(), primitive)


def find_request(message_id: int, sop_class_uid: str) -> bytes:
    """The command set of a C-FIND-RQ (medium priority) whose identifier follows."""
    primitive = C_FIND()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.Priority = _MEDIUM_PRIORITY
    primitive.Identifier = BytesIO(b"\x00")  # any data set: the type says one follows
    return _encoded(C_FIND_RQ(), primitive)


def move_request(message_id: int, sop_class_uid: str, destination: str) -> bytes:
    """The command set of a C-MOVE-RQ to `destination` whose identifier follows."""
    primitive = C_MOVE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.Priority = _MEDIUM_PRIORITY
    primitive.MoveDestination = destination
    primitive.Identifier = BytesIO(b"\x00")
    return _encoded(C_MOVE_RQ(), primitive)


def get_request(message_id: int, sop_class_uid: str) -> bytes:
    """The command set of a C-GET-RQ whose identifier follows."""
    primitive = C_GET()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.Priority = _MEDIUM_PRIORITY
    primitive.Identifier = BytesIO(b"\x00")
    return _encoded(C_GET_RQ(), primitive)


def cancel_request(message_id_being_cancelled: int) -> bytes:
    """The command set of a C-CANCEL-RQ for the operation `message_id_being_cancelled`."""
    primitive = C_CANCEL()
    primitive.MessageIDBeingRespondedTo = message_id_being_cancelled
    return _encoded(C_CANCEL_RQ(), primitive)


def encode_identifier(identifier: Dataset, transfer_syntax_uid: str) -> bytes:
    """An identifier encoded in the presentation context's transfer syntax."""
    implicit, little, deflated = _syntax(transfer_syntax_uid)
    encoded = encode(identifier, implicit, little, deflated)
    if encoded is None:
        raise ValueError("the identifier does not encode in the negotiated transfer syntax")
    return encoded


def decode_identifier(encoded: bytes, transfer_syntax_uid: str) -> Dataset:
    """A response's identifier, decoded (every element now, so errors surface here)."""
    implicit, little, deflated = _syntax(transfer_syntax_uid)
    dataset = decode(BytesIO(encoded), implicit, little, deflated)
    dataset.decode()
    return dataset


def _syntax(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of an uncompressed transfer syntax."""
    if transfer_syntax_uid == ImplicitVRLittleEndian:
        return True, True, False
    if transfer_syntax_uid == ExplicitVRBigEndian:
        return False, False, False
    return False, True, transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def _encoded(
    message: DIMSEMessage, primitive: C_ECHO | C_FIND | C_MOVE | C_GET | C_CANCEL
) -> bytes:
    message.primitive_to_message(primitive)
    return cast(bytes, encode(message.command_set, True, True))


def _single_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _uid(value: bytes) -> str | None:
    if len(value) > _UID_LIMIT + 1 or not value.isascii():
        return None
    text = value.decode("ascii").rstrip("\x00 ").lstrip(" ")
    if not text or any(char not in "0123456789." for char in text):
        return None
    return text
