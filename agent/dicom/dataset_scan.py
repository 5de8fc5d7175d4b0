"""Walks an encoded DICOM data set without decoding it.

The C-STORE handler must know that what it acknowledges is a whole, well-formed data set and
must find the Study/Series/SOP UIDs, but it must not pay for decoding (pixel data is ~99% of
the bytes). This walker reads element headers only, jumps over values, descends into
sequences and checks that every length fits, so truncated or garbage bytes are caught without
copying anything. pydicom's own reader is lenient by design (short reads and trailing bytes
pass silently), which is the opposite of what an acknowledgement needs.

Error messages name tags, offsets and lengths, never element values: they go back to the peer
and into logs. Must not import pynetdicom.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
_WANTED = (SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID)

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32
# A deflated data set is inflated to be checked; a cap keeps a "zip bomb" from eating memory.
_MAX_INFLATED = 1 << 31

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO",
        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
# PS3.5 A.5 and A.7: the whole data set (not only pixel data) is deflated under these.
_DEFLATED_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"}
)


class MalformedDatasetError(ValueError):
    """The encoded data set is not well formed; the message says where and why."""


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """The top-level UIDs found in a well-formed data set (None when absent)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None


def scan_dataset(data: bytes | bytearray | memoryview, transfer_syntax_uid: str) -> DatasetSummary:
    """Check that `data` parses to its last byte under the transfer syntax; return its UIDs.

    Raises `MalformedDatasetError` for garbage, truncation, trailing bytes or an unknown
    transfer syntax. Never raises anything else for any input.
    """
    syntax = UID(transfer_syntax_uid)
    if not syntax.is_transfer_syntax:
        raise MalformedDatasetError(f"{transfer_syntax_uid} is not a known transfer syntax")
    buffer = memoryview(data).cast("B")
    if syntax in _DEFLATED_SYNTAXES:
        buffer = memoryview(_inflate(buffer))
    walker = _Walker(buffer, little_endian=syntax.is_little_endian)
    found: dict[int, str] = {}
    walker.dataset(0, len(buffer), syntax.is_implicit_VR, depth=0, found=found)
    return DatasetSummary(
        sop_class_uid=found.get(SOP_CLASS_UID),
        sop_instance_uid=found.get(SOP_INSTANCE_UID),
        study_instance_uid=found.get(STUDY_INSTANCE_UID),
        series_instance_uid=found.get(SERIES_INSTANCE_UID),
    )


def _inflate(buffer: memoryview) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(buffer, _MAX_INFLATED)
    except zlib.error as exc:
        raise MalformedDatasetError(f"deflated data set does not inflate ({exc})") from None
    if inflater.unconsumed_tail:
        raise MalformedDatasetError(f"deflated data set inflates beyond {_MAX_INFLATED} bytes")
    if not inflater.eof:
        raise MalformedDatasetError("deflated data set is truncated (no end of deflate stream)")
    # Writers pad the deflate stream to an even length with one byte (PS3.5 A.5).
    if len(inflater.unused_data) > 1:
        raise MalformedDatasetError(
            f"{len(inflater.unused_data)} bytes follow the end of the deflated data set"
        )
    return inflated


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _decode_uid(tag: int, value: memoryview) -> str:
    try:
        text = bytes(value).decode("ascii")
    except UnicodeDecodeError:
        raise MalformedDatasetError(f"{_tag_text(tag)} is not an ASCII UID") from None
    uid = text.rstrip("\x00 ")
    if not uid or len(uid) > 64 or "\\" in uid or not uid.isprintable():
        raise MalformedDatasetError(f"{_tag_text(tag)} does not hold one UID of 1-64 characters")
    return uid


class _Walker:
    """Element-by-element cursor over one buffer; every method returns the next offset."""

    def __init__(self, buffer: memoryview, *, little_endian: bool) -> None:
        order = "<" if little_endian else ">"
        self._buffer = buffer
        self._explicit = struct.Struct(order + "HH2sH")
        self._tag_length = struct.Struct(order + "HHL")
        self._long_length = struct.Struct(order + "L")

    def dataset(
        self,
        pos: int,
        end: int,
        implicit: bool,
        *,
        depth: int,
        found: dict[int, str] | None = None,
        delimited: bool = False,
    ) -> int:
        """Walk elements from `pos` to `end`, or to an item delimiter when `delimited`."""
        if depth > _MAX_DEPTH:
            raise MalformedDatasetError(f"sequences nested deeper than {_MAX_DEPTH} levels")
        while pos < end:
            tag, vr, length, value_pos = self._element_header(pos, end, implicit)
            if tag == _ITEM_DELIMITER:
                if not delimited:
                    raise MalformedDatasetError(f"unexpected item delimiter at offset {pos}")
                return value_pos
            if tag in (_ITEM, _SEQUENCE_DELIMITER):
                raise MalformedDatasetError(
                    f"unexpected {_tag_text(tag)} where an element was expected at offset {pos}"
                )
            if length == _UNDEFINED:
                pos = self._undefined_length_value(tag, vr, value_pos, end, implicit, depth)
                continue
            value_end = value_pos + length
            if value_end > end:
                raise MalformedDatasetError(
                    f"truncated: element {_tag_text(tag)} at offset {pos} declares {length} "
                    f"bytes but {end - value_pos} remain"
                )
            if vr == b"SQ" or (implicit and vr is None and _dictionary_vr(tag) == "SQ"):
                self._items(tag, value_pos, value_end, implicit, depth, defined_end=True)
            if found is not None and tag in _WANTED:
                found[tag] = _decode_uid(tag, self._buffer[value_pos:value_end])
            pos = value_end
        if delimited:
            raise MalformedDatasetError("truncated: an item of undefined length is not closed")
        return pos

    def _element_header(
        self, pos: int, end: int, implicit: bool
    ) -> tuple[int, bytes | None, int, int]:
        if pos + 8 > end:
            raise MalformedDatasetError(
                f"truncated: {end - pos} stray bytes at offset {pos} where an element begins"
            )
        if implicit:
            group, element, length = self._tag_length.unpack_from(self._buffer, pos)
            return group << 16 | element, None, length, pos + 8
        group, element, vr, short_length = self._explicit.unpack_from(self._buffer, pos)
        tag = group << 16 | element
        if group == 0xFFFE:
            # Item and delimiter tags carry no VR even in explicit VR data sets.
            (length,) = self._long_length.unpack_from(self._buffer, pos + 4)
            return tag, None, length, pos + 8
        if vr in _SHORT_VRS:
            return tag, vr, short_length, pos + 8
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise MalformedDatasetError(f"truncated: element {_tag_text(tag)} header cut off")
            (length,) = self._long_length.unpack_from(self._buffer, pos + 8)
            return tag, vr, length, pos + 12
        raise MalformedDatasetError(
            f"element {_tag_text(tag)} at offset {pos} has an invalid VR (not DICOM data?)"
        )

    def _undefined_length_value(
        self, tag: int, vr: bytes | None, pos: int, end: int, implicit: bool, depth: int
    ) -> int:
        if vr in (b"OB", b"OW") or (implicit and tag == 0x7FE00010):
            return self._fragments(tag, pos, end)
        if vr == b"SQ" or vr is None:
            return self._items(tag, pos, end, implicit, depth, defined_end=False)
        if vr == b"UN":
            # PS3.5 6.2.2: an undefined-length UN is a sequence encoded in implicit VR LE.
            return self._items(tag, pos, end, True, depth, defined_end=False)
        raise MalformedDatasetError(
            f"element {_tag_text(tag)} has undefined length but VR {vr.decode('ascii')}"
        )

    def _item_header(self, parent: int, pos: int, end: int) -> tuple[int, int]:
        if pos + 8 > end:
            raise MalformedDatasetError(f"truncated: sequence {_tag_text(parent)} is cut off")
        group, element, length = self._tag_length.unpack_from(self._buffer, pos)
        return group << 16 | element, length

    def _items(
        self, parent: int, pos: int, end: int, implicit: bool, depth: int, *, defined_end: bool
    ) -> int:
        while not (defined_end and pos == end):
            tag, length = self._item_header(parent, pos, end)
            if tag == _SEQUENCE_DELIMITER and not defined_end:
                return pos + 8
            if tag != _ITEM:
                raise MalformedDatasetError(
                    f"sequence {_tag_text(parent)} holds {_tag_text(tag)} at offset {pos} "
                    "where an item was expected"
                )
            if length == _UNDEFINED:
                pos = self.dataset(pos + 8, end, implicit, depth=depth + 1, delimited=True)
                continue
            item_end = pos + 8 + length
            if item_end > end:
                raise MalformedDatasetError(
                    f"truncated: an item of sequence {_tag_text(parent)} declares {length} bytes "
                    f"but {end - pos - 8} remain"
                )
            self.dataset(pos + 8, item_end, implicit, depth=depth + 1)
            pos = item_end
        return pos

    def _fragments(self, parent: int, pos: int, end: int) -> int:
        while True:
            tag, length = self._item_header(parent, pos, end)
            if tag == _SEQUENCE_DELIMITER:
                return pos + 8
            if tag != _ITEM or length == _UNDEFINED:
                raise MalformedDatasetError(
                    f"encapsulated {_tag_text(parent)} holds a malformed fragment at offset {pos}"
                )
            pos += 8 + length
            if pos > end:
                raise MalformedDatasetError(
                    f"truncated: a fragment of {_tag_text(parent)} declares {length} bytes "
                    f"but {end - pos + length} remain"
                )


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None
