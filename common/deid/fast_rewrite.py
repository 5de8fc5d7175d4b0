"""The Basic Profile applied directly to explicit VR little endian bytes, without pydicom.

The same plan and the same value rules as `rewrite.py` (which stays the reference and the
path for every other transfer syntax), at a fraction of the cost: an element the plan keeps
is copied as bytes, so a 130 KB image costs one pass over about fifty element headers instead
of a parse into objects and an encode back (docs/benchmarks.md, "De-identification").

Covered: explicit VR little endian data sets, including encapsulated (compressed) pixel data,
defined and undefined lengths. Anything else raises `FastPathUnsupported` and the caller uses
`rewrite.py`: implicit VR, big endian, deflate, a public attribute stored as UN (its content
cannot be seen without the dictionary), or bytes that do not parse.

Text is handled as Latin-1, which maps every byte to one character and back: values are never
re-encoded, so any Specific Character Set survives unchanged except where a rule replaces it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from common.deid.basic import Action, BasicPlan
from common.deid.errors import DeidError
from common.deid.uids import date_offset_days, remap_uid, shift_date, shift_datetime

__all__ = [
    "META_KEPT",
    "FastPathUnsupported",
    "FastResult",
    "apply_basic_plan_fast",
    "reduce_file_meta",
]

_NOT_FAST = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS |= {b"SV", b"UV"}
_TEXT_VRS = {b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"LT", b"PN", b"SH"}
_TEXT_VRS |= {b"ST", b"TM", b"UC", b"UI", b"UR", b"UT"}
_NUMBER_FORMATS = {
    b"US": "<H",
    b"SS": "<h",
    b"UL": "<I",
    b"SL": "<i",
    b"FL": "<f",
    b"FD": "<d",
    b"SV": "<q",
    b"UV": "<Q",
}
_DUMMY_TEXT = {
    b"AE": "ANONYMOUS",
    b"AS": "000Y",
    b"CS": "ANONYMIZED",
    b"DA": "19000101",
    b"DS": "0",
    b"DT": "19000101000000",
    b"IS": "0",
    b"LO": "ANONYMIZED",
    b"LT": "ANONYMIZED",
    b"PN": "ANONYMIZED",
    b"SH": "ANONYMIZED",
    b"ST": "ANONYMIZED",
    b"TM": "000000",
    b"UC": "ANONYMIZED",
    b"UR": "",
    b"UT": "ANONYMIZED",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_SOP_INSTANCE_UID = 0x00080018
_STUDY_INSTANCE_UID = 0x0020000D
_SERIES_INSTANCE_UID = 0x0020000E
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
_TRANSFER_SYNTAX_UID = 0x00020010
# Values of these attributes are scrubbed from text kept by "clean" (as in rewrite.py).
_IDENTIFYING_TAGS = (
    0x00100010, 0x00100020, 0x00101000, 0x00101001, 0x00101005, 0x00101060, 0x00100030,
    0x00101040, 0x00102154, 0x00101090, 0x00080050, 0x00080090, 0x00081050, 0x00081070,
    0x00080080, 0x00080081, 0x00081010, 0x00080020, 0x00080021, 0x00080022, 0x00080023,
)  # fmt: skip
_MIN_TOKEN = 3
# The file meta elements a Part-10 file needs; the others (source, sending and receiving AE
# titles and addresses, private information) name the site's devices or carry vendor data.
META_KEPT = frozenset({0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013})


class FastPathUnsupported(Exception):
    """These bytes need the pydicom path (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class FastResult:
    """The de-identified Part-10 bytes and the instance UIDs as written."""

    data: bytes
    uids: dict[int, str]


@dataclass(slots=True)
class _State:
    buffer: bytes
    plan: BasicPlan
    salt: str
    offset_days: int
    scrub: re.Pattern[str] | None = None
    uids: dict[int, str] = field(default_factory=dict)


def apply_basic_plan_fast(part10: bytes, plan: BasicPlan, salt: str, marks: bytes) -> FastResult:
    """De-identify Part-10 bytes under `plan`; `marks` are the encoded elements of the
    de-identification markers (group 0012 and (0028,0303)), inserted in tag order.

    Raises:
        FastPathUnsupported: the bytes need the pydicom path.
        DeidError: a value the plan must change cannot be processed.
    """
    if len(part10) < 144 or part10[128:132] != b"DICM":
        raise FastPathUnsupported
    state = _State(part10, plan, salt, date_offset_days(salt))
    try:
        meta_end, syntax = _meta_end(part10)
        if syntax in _NOT_FAST or not syntax.startswith("1.2.840.10008.1.2"):
            raise FastPathUnsupported
        if Action.CLEAN in plan.exact.values():
            state.scrub = _scrub_pattern(_identifying_values(part10, meta_end))
        body = _dataset(state, meta_end, len(part10), top=True, marks=_split(marks))
        meta = _meta(state, meta_end)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise FastPathUnsupported from exc
    return FastResult(part10[:132] + meta + body, state.uids)


# --- parsing ------------------------------------------------------------------------------


def _header(buffer: bytes, offset: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, value offset) of the element at `offset`."""
    group, element = struct.unpack_from("<HH", buffer, offset)
    tag = (group << 16) | element
    if group == 0xFFFE:
        (length,) = struct.unpack_from("<I", buffer, offset + 4)
        return tag, b"", length, offset + 8
    vr = buffer[offset + 4 : offset + 6]
    if vr in _LONG_VRS:
        (length,) = struct.unpack_from("<I", buffer, offset + 8)
        return tag, vr, length, offset + 12
    if not vr.isalpha() or not vr.isupper():
        raise FastPathUnsupported
    (length,) = struct.unpack_from("<H", buffer, offset + 6)
    return tag, vr, length, offset + 8


def _meta_end(buffer: bytes) -> tuple[int, str]:
    tag, vr, length, value = _header(buffer, 132)
    if tag != 0x00020000 or vr != b"UL":
        raise FastPathUnsupported
    (group_length,) = struct.unpack_from("<I", buffer, value)
    end = value + 4 + group_length
    offset, syntax = value + 4, ""
    while offset < end:
        tag, vr, length, value = _header(buffer, offset)
        if tag == _TRANSFER_SYNTAX_UID:
            syntax = buffer[value : value + length].decode("ascii").strip("\x00 ")
        offset = value + length
    if offset != end:
        raise FastPathUnsupported
    return end, syntax


def _undefined_end(buffer: bytes, offset: int) -> int:
    """End (after the delimiter) of an undefined-length run of items starting at `offset`."""
    while True:
        tag, _, length, value = _header(buffer, offset)
        if tag == _SEQUENCE_END:
            return value
        if tag != _ITEM:
            raise FastPathUnsupported
        offset = _item_end(buffer, value) if length == _UNDEFINED else value + length


def _item_end(buffer: bytes, offset: int) -> int:
    """End (after the item delimiter) of an undefined-length item whose data starts here."""
    while True:
        tag, vr, length, value = _header(buffer, offset)
        if tag == _ITEM_END:
            return value
        offset = _element_end(buffer, tag, vr, length, value)


def _element_end(buffer: bytes, tag: int, vr: bytes, length: int, value: int) -> int:
    if length != _UNDEFINED:
        if value + length > len(buffer):
            raise FastPathUnsupported  # truncated: let pydicom say what is wrong
        return value + length
    if vr == b"UN":
        raise FastPathUnsupported  # an implicit VR sequence inside: pydicom's job
    return _undefined_end(buffer, value)


# --- writing ------------------------------------------------------------------------------


def _encode(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB", b"UN") else b" "
    group, element = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    if len(value) > 0xFFFF:
        raise DeidError(f"{_tag_text(tag)}: the replacement does not fit its VR")
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _split(marks: bytes) -> list[tuple[int, bytes]]:
    """The marker elements as (tag, encoded bytes), in tag order."""
    found, offset = [], 0
    while offset < len(marks):
        tag, vr, length, value = _header(marks, offset)
        end = _element_end(marks, tag, vr, length, value)
        found.append((tag, marks[offset:end]))
        offset = end
    return found


def _dataset(
    state: _State, start: int, end: int, *, top: bool, marks: list[tuple[int, bytes]]
) -> bytes:
    """Rewrite the elements in [start, end); an item delimiter also ends a nested data set."""
    buffer, plan, out = state.buffer, state.plan, bytearray()
    marked = {tag for tag, _ in marks}
    pending = list(marks)
    offset = start
    while offset < end:
        tag, vr, length, value = _header(buffer, offset)
        if tag == _ITEM_END and not top:
            break
        element_end = _element_end(buffer, tag, vr, length, value)
        while pending and pending[0][0] < tag:
            out += pending.pop(0)[1]
        raw = buffer[offset:element_end]
        offset = element_end
        if tag in marked or (tag & 0xFFFF == 0 and tag >> 16 != 0x0002):
            # Group lengths (retired) would no longer match what the group holds.
            continue
        if tag >> 16 & 1:
            if plan.remove_private:
                continue
            out += raw
            continue
        if vr == b"UN":
            raise FastPathUnsupported  # the plan cannot see what a public UN holds
        action = plan.action_for(tag)
        if action is None or action is Action.KEEP:
            out += _sequence(state, tag, value, length) if vr == b"SQ" else raw
            if top and tag in (_SOP_INSTANCE_UID, _SERIES_INSTANCE_UID, _STUDY_INSTANCE_UID):
                state.uids[tag] = _text(buffer[value : value + length]).strip("\x00 ")
            continue
        if action is Action.REMOVE:
            continue
        out += _apply(state, tag, vr, buffer[value : value + length], length, value, action, top)
    for _, encoded in pending:
        out += encoded
    return bytes(out)


def _sequence(state: _State, tag: int, value: int, length: int) -> bytes:
    """The sequence with every item de-identified (defined lengths throughout)."""
    buffer = state.buffer
    items = bytearray()
    offset = value
    end = value + length if length != _UNDEFINED else None
    while end is None or offset < end:
        item_tag, _, item_length, item_value = _header(buffer, offset)
        if item_tag == _SEQUENCE_END:
            break
        if item_tag != _ITEM:
            raise FastPathUnsupported
        if item_length == _UNDEFINED:
            item_end = _item_end(buffer, item_value)
            content = _dataset(state, item_value, item_end, top=False, marks=[])
        else:
            item_end = item_value + item_length
            if item_end > len(buffer):
                raise FastPathUnsupported
            content = _dataset(state, item_value, item_end, top=False, marks=[])
        items += struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content
        offset = item_end
    return _encode(tag, b"SQ", bytes(items))


def _apply(
    state: _State,
    tag: int,
    vr: bytes,
    raw: bytes,
    length: int,
    value: int,
    action: Action,
    top: bool,
) -> bytes:
    if vr == b"SQ":
        if action in (Action.ITEMS, Action.CLEAN, Action.UID, Action.SHIFT_DATE):
            return _sequence(state, tag, value, length)
        return _encode(tag, vr, b"")
    try:
        new = _new_value(state, vr, raw, action)
    except ValueError:
        raise DeidError(
            f"{_tag_text(tag)} holds a value that the Basic Profile's {action} rule "
            "cannot process; the instance was not de-identified"
        ) from None
    if top and tag in (_SOP_INSTANCE_UID, _SERIES_INSTANCE_UID, _STUDY_INSTANCE_UID):
        state.uids[tag] = _text(new).strip("\x00 ")
    return _encode(tag, vr, new)


def _new_value(state: _State, vr: bytes, raw: bytes, action: Action) -> bytes:
    if action in (Action.EMPTY, Action.ITEMS):
        return b""
    if action is Action.DUMMY:
        if vr == b"UI":
            return _map_uids(state, raw)
        if vr in _DUMMY_TEXT:
            return _DUMMY_TEXT[vr].encode("ascii")
        if vr in _NUMBER_FORMATS:
            return struct.pack(_NUMBER_FORMATS[vr], 0)
        return b""
    if action is Action.UID:
        return _map_uids(state, raw) if vr == b"UI" else b""
    if action is Action.SHIFT_DATE:
        if vr == b"DA":
            return _each(raw, lambda text: shift_date(text, state.offset_days))
        if vr == b"DT":
            return _each(raw, lambda text: shift_datetime(text, state.offset_days))
        return raw
    if action is Action.CLEAN and vr in _TEXT_VRS and state.scrub is not None:
        scrub = state.scrub
        return _each(raw, lambda text: scrub.sub("*", text))
    return raw


def _map_uids(state: _State, raw: bytes) -> bytes:
    return _each(raw, lambda uid: remap_uid(state.salt, uid), padding="\x00 ")


def _each(raw: bytes, change: Callable[[str], str], padding: str = " \x00") -> bytes:
    """Apply `change` to each value of a backslash-separated text value."""
    text = _text(raw).rstrip(padding)
    if not text:
        return b""
    parts = (change(part.strip(padding)) if part else part for part in text.split("\\"))
    return "\\".join(parts).encode("latin-1")


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def _meta(state: _State, meta_end: int) -> bytes:
    """The file meta reduced to `META_KEPT`, its Media Storage SOP Instance UID remapped and
    its group length redone."""
    buffer, out = state.buffer, bytearray()
    _, _, _, value = _header(buffer, 132)
    offset = value + 4
    action = state.plan.action_for(_MEDIA_STORAGE_SOP_INSTANCE_UID)
    while offset < meta_end:
        tag, vr, length, value = _header(buffer, offset)
        element_end = value + length
        if tag == _MEDIA_STORAGE_SOP_INSTANCE_UID and action is Action.UID:
            out += _encode(tag, vr, _map_uids(state, buffer[value:element_end]))
        elif tag in META_KEPT:
            out += buffer[offset:element_end]
        offset = element_end
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(out)) + bytes(out)


def reduce_file_meta(part10: bytes) -> bytes:
    """`part10` with its file meta reduced to `META_KEPT` (values unchanged).

    Raises:
        FastPathUnsupported: the bytes do not start with a Part-10 header.
    """
    if len(part10) < 144 or part10[128:132] != b"DICM":
        raise FastPathUnsupported
    try:
        meta_end, _ = _meta_end(part10)
        out = bytearray()
        _, _, _, value = _header(part10, 132)
        offset = value + 4
        while offset < meta_end:
            tag, _, length, value = _header(part10, offset)
            if tag in META_KEPT:
                out += part10[offset : value + length]
            offset = value + length
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise FastPathUnsupported from exc
    meta = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(out)) + bytes(out)
    return part10[:132] + meta + part10[meta_end:]


def _identifying_values(buffer: bytes, start: int) -> list[str]:
    """Top-level values of the identifying attributes (Latin-1 text)."""
    wanted, values, offset = set(_IDENTIFYING_TAGS), [], start
    while offset < len(buffer):
        tag, vr, length, value = _header(buffer, offset)
        if tag in wanted and length != _UNDEFINED:
            values.append(_text(buffer[value : value + length]).strip(" \x00"))
        if tag > max(wanted):
            break
        offset = _element_end(buffer, tag, vr, length, value)
    return values


def _scrub_pattern(values: list[str]) -> re.Pattern[str] | None:
    tokens: set[str] = set()
    for value in values:
        for one in value.split("\\"):
            text = one.strip()
            tokens.add(text)
            tokens.update(re.split(r"[\^= ,]+", text))
    usable = sorted((token for token in tokens if len(token) >= _MIN_TOKEN), key=len, reverse=True)
    if not usable:
        return None
    return re.compile("|".join(re.escape(token) for token in usable), re.IGNORECASE)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
