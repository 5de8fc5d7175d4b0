"""DIMSE command sets of the intake: the C-STORE-RQ parse and C-STORE-RSP encode written
directly (the per-instance hot path), pynetdicom's DIMSE message classes for everything else.

A command set is group 0000 in implicit VR little endian (PS3.7 6.3.1). Decoding one into a
pydicom Dataset and a pynetdicom message, and encoding the answer the same way, costs more per
instance than the rest of the association loop (0.3 ms for the response alone, measured), so
the C-STORE-RQ and its response are handled here byte by byte. Anything the fast path does not
know (another element, an odd length, a non-ASCII UID) returns None and goes to pynetdicom's
codec, which stays the reference: `tests/agent/test_engine_commands.py` checks with hypothesis
that both give the same fields in and the same bytes out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode

__all__ = [
    "C_ECHO_RQ_FIELD",
    "C_STORE_RQ_FIELD",
    "Command",
    "StoreRequest",
    "decode_command",
    "echo_response",
    "parse_store_request",
    "store_response",
]

C_STORE_RQ_FIELD = 0x0001
C_ECHO_RQ_FIELD = 0x0030
_C_STORE_RSP_FIELD = 0x8001
_NO_DATA_SET = 0x0101
_UID_LIMIT = 64
_AE_LIMIT = 16
_LO_LIMIT = 64
_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")

# The elements a C-STORE-RQ may carry (PS3.7 Table 9.1-1), with their VR.
_STORE_RQ_ELEMENTS = {
    0x0000: "UL",  # Command Group Length
    0x0002: "UI",  # Affected SOP Class UID
    0x0100: "US",  # Command Field
    0x0110: "US",  # Message ID
    0x0700: "US",  # Priority
    0x0800: "US",  # Command Data Set Type
    0x1000: "UI",  # Affected SOP Instance UID
    0x1030: "AE",  # Move Originator Application Entity Title
    0x1031: "US",  # Move Originator Message ID
}


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """The fields of a C-STORE-RQ the intake uses."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    priority: int
    has_data_set: bool
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None


@dataclass(frozen=True, slots=True)
class Command:
    """A command set decoded by pynetdicom's codec: its Command Field and the Dataset."""

    field: int
    has_data_set: bool
    dataset: Dataset

    def store_request(self) -> StoreRequest | None:
        """The C-STORE-RQ this command is, None when it is another or lacks a required field."""
        ds = self.dataset
        if self.field != C_STORE_RQ_FIELD:
            return None
        message_id = _single_int(ds.get("MessageID"))
        sop_class = ds.get("AffectedSOPClassUID")
        sop_instance = ds.get("AffectedSOPInstanceUID")
        if message_id is None or not sop_class or not sop_instance:
            return None
        originator = ds.get("MoveOriginatorApplicationEntityTitle")
        return StoreRequest(
            message_id=message_id,
            sop_class_uid=str(sop_class),
            sop_instance_uid=str(sop_instance),
            priority=_single_int(ds.get("Priority")) or 0,
            has_data_set=self.has_data_set,
            move_originator_ae_title=None if originator is None else str(originator).strip(),
            # Informational only: a value that is not one number is dropped, not fatal.
            move_originator_message_id=_single_int(ds.get("MoveOriginatorMessageID")),
        )


def _single_int(value: object) -> int | None:
    """A US element's value when it is one number (pydicom gives a list for an odd length)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_store_request(encoded: bytes | bytearray | memoryview) -> StoreRequest | None:
    """Parse a C-STORE-RQ command set directly; None for anything else, or anything unusual
    (the caller then asks `decode_command`)."""
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
        vr = _STORE_RQ_ELEMENTS.get(element)
        if vr is None or (vr == "US" and length != 2) or (vr == "UL" and length != 4):
            return None
        values[element] = bytes(data[offset : offset + length])
        offset += length
    group_length = values.get(0x0000)
    if group_length is not None and _UL.unpack(group_length)[0] != end - 12:
        return None
    try:
        command_field = _US.unpack(values[0x0100])[0]
        message_id = _US.unpack(values[0x0110])[0]
        data_set_type = _US.unpack(values[0x0800])[0]
        sop_class = _uid(values[0x0002])
        sop_instance = _uid(values[0x1000])
    except KeyError:
        return None
    if command_field != C_STORE_RQ_FIELD or sop_class is None or sop_instance is None:
        return None
    priority = _US.unpack(values[0x0700])[0] if 0x0700 in values else 0
    originator: str | None = None
    if 0x1030 in values:
        originator = _text(values[0x1030], _AE_LIMIT)
        if originator is None:
            return None
    originator_id = _US.unpack(values[0x1031])[0] if 0x1031 in values else None
    return StoreRequest(
        message_id=message_id,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        priority=priority,
        has_data_set=data_set_type != _NO_DATA_SET,
        move_originator_ae_title=originator,
        move_originator_message_id=originator_id,
    )


def decode_command(encoded: bytes | bytearray | memoryview) -> Command | None:
    """Decode any command set with pynetdicom's codec; None when it does not decode or lacks
    the Command Field."""
    try:
        dataset = decode(BytesIO(bytes(encoded)), True, True)
        dataset.decode()  # force every element now, inside the try
        field = dataset.get("CommandField")
        data_set_type = dataset.get("CommandDataSetType", _NO_DATA_SET)
        if field is None:
            return None
        return Command(int(field), int(data_set_type) != _NO_DATA_SET, dataset)
    except Exception:  # pydicom raises many kinds on bytes it cannot read
        return None


def store_response(
    *,
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    error_comment: str | None,
) -> bytes:
    """The encoded command set of a C-STORE-RSP; directly when every value fits its VR as
    ASCII, else through pynetdicom's C_STORE_RSP message."""
    fast = _store_response_fast(message_id, sop_class_uid, sop_instance_uid, status, error_comment)
    if fast is not None:
        return fast
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Status = status
    if error_comment is not None:
        primitive.ErrorComment = error_comment  # type: ignore[assignment]
    return _encoded(C_STORE_RSP(), primitive)


def echo_response(message_id: int, sop_class_uid: str) -> bytes:
    """The encoded command set of a C-ECHO-RSP with Success (rare: pynetdicom's codec)."""
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.Status = 0x0000
    return _encoded(C_ECHO_RSP(), primitive)


def _encoded(message: DIMSEMessage, primitive: C_STORE | C_ECHO) -> bytes:
    message.primitive_to_message(primitive)
    return cast(bytes, encode(message.command_set, True, True))


def _store_response_fast(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    error_comment: str | None,
) -> bytes | None:
    sop_class = _ascii(sop_class_uid, _UID_LIMIT, b"\x00")
    sop_instance = _ascii(sop_instance_uid, _UID_LIMIT, b"\x00")
    if sop_class is None or sop_instance is None or not sop_class or not sop_instance:
        return None
    if not (0 <= message_id <= 0xFFFF and 0 <= status <= 0xFFFF):
        return None
    body = [
        _element(0x0002, sop_class),
        _element(0x0100, _US.pack(_C_STORE_RSP_FIELD)),
        _element(0x0120, _US.pack(message_id)),
        _element(0x0800, _US.pack(_NO_DATA_SET)),
        _element(0x0900, _US.pack(status)),
    ]
    if error_comment is not None:
        comment = _ascii(error_comment, _LO_LIMIT, b" ")
        if comment is None or "\\" in error_comment or not comment:
            return None
        body.append(_element(0x0902, comment))
    body.append(_element(0x1000, sop_instance))
    encoded = b"".join(body)
    return _element(0x0000, _UL.pack(len(encoded))) + encoded


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, element, len(value)) + value


def _ascii(value: str, limit: int, padding: bytes) -> bytes | None:
    if not value.isascii() or not value.isprintable():
        return None
    encoded = value.encode("ascii")
    if len(encoded) > limit:
        return None
    return encoded + padding if len(encoded) % 2 else encoded


def _uid(value: bytes) -> str | None:
    text = _text(value, _UID_LIMIT)
    if not text or any(char not in "0123456789." for char in text):
        return None
    return text


def _text(value: bytes, limit: int) -> str | None:
    if len(value) > limit + 1 or not value.isascii():
        return None
    text = value.decode("ascii").rstrip("\x00 ").lstrip(" ")
    return text if text.isprintable() else None
