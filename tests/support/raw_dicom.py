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
ASSOCIATE_AC, ASSOCIATE_RJ = 0x02, 0x03


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
