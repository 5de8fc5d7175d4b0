"""A raw DICOM upper-layer (PS3.8) writer and reader, for sending what no real SCU would.

Tests that probe an SCP with hostile input need bytes a toolkit refuses to produce: PDUs cut
short, length fields that lie, data before an association, A-ABORT in the middle of an
instance. This module builds them by hand from the standard's layouts, with no DICOM network
library, so a test drives any SCP engine over the wire only. `Wire` is one TCP connection
with a deadline on every read: whatever the peer does, a call returns or raises
`TimeoutError`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "APPLICATION_CONTEXT",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "Pdu",
    "PduType",
    "Wire",
    "a_abort",
    "a_associate_rq",
    "a_release_rq",
    "c_store_rq",
    "command_status",
    "element",
    "p_data",
    "pdu",
    "pdv",
    "pdv_fragments",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.543.1"
_C_STORE_RQ = 0x0001
_HEADER = struct.Struct(">BxI")


class PduType(IntEnum):
    """PDU types of PS3.8 section 9.3."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


@dataclass(frozen=True, slots=True)
class Pdu:
    """One PDU as read: its type byte and its body."""

    type: int
    body: bytes


def pdu(kind: int, body: bytes, *, length: int | None = None) -> bytes:
    """A PDU: type, reserved byte, 4-byte big-endian length (`length` may lie), body."""
    return _HEADER.pack(kind, len(body) if length is None else length) + body


def _item(kind: int, body: bytes, *, length: int | None = None) -> bytes:
    return struct.pack(">BxH", kind, len(body) if length is None else length) + body


def _ae(title: str | bytes) -> bytes:
    raw = title.encode("ascii") if isinstance(title, str) else title
    return raw.ljust(16, b" ")[:16]


def _uid(value: str | bytes) -> bytes:
    return value.encode("ascii") if isinstance(value, str) else value


def a_associate_rq(
    *,
    called: str | bytes = "CONNECTOR",
    calling: str | bytes = "FUZZER",
    contexts: Sequence[tuple[int, str | bytes, Sequence[str | bytes]]] = (),
    max_pdu: int = 16384,
    context_item_length: int | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ with presentation contexts (id, abstract syntax, transfer syntaxes).

    `context_item_length` overrides the length field of every presentation context item.
    """
    items = _item(0x10, _uid(APPLICATION_CONTEXT))
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, _uid(abstract)) + b"".join(_item(0x40, _uid(ts)) for ts in syntaxes)
        body = struct.pack(">Bxxx", context_id) + sub
        items += _item(0x20, body, length=context_item_length)
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, _uid(_IMPLEMENTATION_CLASS_UID))
    items += _item(0x50, user)
    fixed = struct.pack(">Hxx", 1) + _ae(called) + _ae(calling) + bytes(32)
    return pdu(PduType.ASSOCIATE_RQ, fixed + items)


def pdv(
    context_id: int, data: bytes, *, command: bool, last: bool, length: int | None = None
) -> bytes:
    """One presentation data value item (`length` may lie)."""
    header = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    body = struct.pack(">BB", context_id, header) + data
    return struct.pack(">I", len(body) if length is None else length) + body


def p_data(*items: bytes, length: int | None = None) -> bytes:
    """A P-DATA-TF PDU holding the given PDV items."""
    return pdu(PduType.P_DATA_TF, b"".join(items), length=length)


def a_release_rq() -> bytes:
    """An A-RELEASE-RQ."""
    return pdu(PduType.RELEASE_RQ, bytes(4))


def a_abort(source: int = 0, reason: int = 0) -> bytes:
    """An A-ABORT from the service user (source 0) by default."""
    return pdu(PduType.ABORT, struct.pack(">xxBB", source, reason))


def element(group: int, elem: int, value: bytes, *, length: int | None = None) -> bytes:
    """One implicit VR little endian element (`length` may lie); values are padded to even."""
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", group, elem, len(value) if length is None else length) + value


def _pad_uid(value: str | bytes) -> bytes:
    raw = _uid(value)
    return raw + b"\0" if len(raw) % 2 else raw


def c_store_rq(sop_class: str | bytes, sop_instance: str | bytes, message_id: int = 1) -> bytes:
    """The command set of a C-STORE-RQ with a data set, implicit VR little endian."""
    body = (
        element(0x0000, 0x0002, _pad_uid(sop_class))
        + element(0x0000, 0x0100, struct.pack("<H", _C_STORE_RQ))
        + element(0x0000, 0x0110, struct.pack("<H", message_id))
        + element(0x0000, 0x0700, struct.pack("<H", 0))
        + element(0x0000, 0x0800, struct.pack("<H", 0x0000))
        + element(0x0000, 0x1000, _pad_uid(sop_instance))
    )
    return element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def command_status(command: bytes) -> int | None:
    """The Status (0000,0900) of an implicit VR little endian command set, if it has one."""
    offset = 0
    while offset + 8 <= len(command):
        group, elem, length = struct.unpack_from("<HHI", command, offset)
        value = command[offset + 8 : offset + 8 + length]
        if (group, elem) == (0x0000, 0x0900) and len(value) == 2:
            return int(struct.unpack("<H", value)[0])
        offset += 8 + length
    return None


def pdv_fragments(body: bytes) -> list[tuple[int, int, bytes]]:
    """The (context id, control header, data) of each PDV item of a P-DATA-TF body."""
    fragments = []
    offset = 0
    while offset + 6 <= len(body):
        (length,) = struct.unpack_from(">I", body, offset)
        context_id, header = body[offset + 4], body[offset + 5]
        fragments.append((context_id, header, body[offset + 6 : offset + 4 + length]))
        offset += 4 + length
    return fragments


class Wire:
    """One TCP connection to an SCP, every read bounded by `timeout` seconds."""

    def __init__(self, port: int, *, timeout: float, host: str = "127.0.0.1") -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> bool:
        """Send `data`; False when the peer has already closed (reset, broken pipe)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def finish_sending(self) -> None:
        """Half-close: the peer reads end-of-file after what was sent."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def read_pdu(self) -> Pdu | None:
        """The next PDU, or None when the peer closed (cleanly or by reset).

        Raises `TimeoutError` when nothing complete arrives within the deadline.
        """
        deadline = time.monotonic() + self.timeout
        header = self._read_exactly(_HEADER.size, deadline)
        if header is None:
            return None
        kind, length = _HEADER.unpack(header)
        body = self._read_exactly(length, deadline)
        return None if body is None else Pdu(kind, body)

    def _read_exactly(self, count: int, deadline: float) -> bytes | None:
        chunks = bytearray()
        while len(chunks) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete PDU within {self.timeout} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(count - len(chunks))
            except ConnectionResetError:
                return None
            except TimeoutError:
                raise TimeoutError(f"no complete PDU within {self.timeout} s") from None
            if not chunk:
                return None
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
