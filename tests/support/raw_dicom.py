"""A DICOM requestor on a raw socket: an A-ASSOCIATE-RQ built with pynetdicom's codec, and the
PDUs that come back, read as they are.

Why not pynetdicom's SCU for rejections: when the acceptor answers A-ASSOCIATE-RJ quickly (the
lean engine does, in well under a millisecond), pynetdicom's requestor thread can find its DUL
thread already closed the transport after the RJ and report a failed connection instead of a
rejection (`_negotiate_as_requestor` checks `_is_connected` after the fact). Reading the RJ off
the socket has no such race.
"""

from __future__ import annotations

import socket
import ssl
import struct

from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

_WAIT_SECONDS = 10.0
ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA = 0x02, 0x03, 0x04


def connect(port: int, context: ssl.SSLContext | None = None) -> socket.socket:
    """A connection to 127.0.0.1:`port`, over TLS with `context`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=_WAIT_SECONDS)
    if context is None:
        return sock
    return context.wrap_socket(sock, server_hostname="localhost")


def read_exact(sock: socket.socket, count: int) -> bytes | None:
    """Exactly `count` bytes, None when the peer closed first."""
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next PDU's type and body; None when the peer closed (or reset) instead."""
    try:
        header = read_exact(sock, 6)
        if header is None:
            return None
        pdu_type, length = struct.unpack(">BxL", header)
        body = read_exact(sock, length)
    except (ConnectionResetError, ssl.SSLEOFError):
        return None
    return None if body is None else (pdu_type, body)


def association_request(
    contexts: list[tuple[str, str]] | None = None,
    *,
    calling: str = "RAWSCU",
    called: str = "CONNECTOR",
) -> bytes:
    """An encoded A-ASSOCIATE-RQ proposing `contexts` (MR in explicit VR LE by default)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    proposed = contexts or [(MRImageStorage, ExplicitVRLittleEndian)]
    primitive.presentation_context_definition_list = [
        build_context(abstract, [syntax]) for abstract, syntax in proposed
    ]
    for number, context in enumerate(primitive.presentation_context_definition_list):
        context.context_id = 2 * number + 1
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    primitive.user_information = [maximum]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return bytes(request.encode())


def rejection(
    port: int,
    *,
    calling: str = "SCANNER",
    called: str = "CONNECTOR",
    context: ssl.SSLContext | None = None,
) -> tuple[int, int, int] | None:
    """(result, source, diagnostic) of the A-ASSOCIATE-RJ the acceptor answers with; None when
    it answered anything else (the connection is then closed)."""
    with connect(port, context) as sock:
        sock.sendall(association_request(calling=calling, called=called))
        answer = read_pdu(sock)
    if answer is None or answer[0] != ASSOCIATE_RJ:
        return None
    body = answer[1]
    return body[1], body[2], body[3]


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU of one PDV (`control`: 0x01 command, 0x02 last fragment)."""
    item = struct.pack(">LBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BxL", P_DATA, len(item)) + item


def store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """An encoded C-STORE-RQ command set (implicit VR little endian) with a data set."""

    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0, tag, len(value)) + value

    def uid(value: str) -> bytes:
        raw = value.encode()
        return raw + b"\x00" if len(raw) % 2 else raw

    body = b"".join(
        [
            element(0x0002, uid(sop_class)),
            element(0x0100, struct.pack("<H", 0x0001)),
            element(0x0110, struct.pack("<H", message_id)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0x0000)),
            element(0x1000, uid(sop_instance)),
        ]
    )
    return element(0x0000, struct.pack("<L", len(body))) + body


def established(port: int) -> socket.socket:
    """A connection with an association for MR images in explicit VR little endian."""
    sock = connect(port)
    sock.sendall(association_request([(MRImageStorage, ExplicitVRLittleEndian)]))
    answer = read_pdu(sock)
    assert answer is not None
    assert answer[0] == ASSOCIATE_AC
    return sock
