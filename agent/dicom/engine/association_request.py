"""The association request of the lean requestor (PS3.8 9.3.2 to 9.3.4): connect, TLS, the
A-ASSOCIATE-RQ built by pynetdicom's PDU classes (with SCP/SCU role selection items for the
contexts that ask for the SCP role), the answer read and settled by pynetdicom's
`negotiate_as_requestor`; and the errors of the requestor.

Errors name what happened (a rejection with its result, source and reason), never a DICOM value.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_requestor

from agent.dicom.engine.pdu import (
    A_ABORT,
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    PeerClosed,
    Reader,
    abort_pdu,
)

__all__ = [
    "PDU_MARGIN",
    "AssociationAborted",
    "AssociationClosed",
    "AssociationRejected",
    "ConnectFailed",
    "PeerTimeout",
    "ProtocolViolation",
    "RequestedContext",
    "RequestorError",
    "associate",
]

_A_ASSOCIATE_AC, _A_ASSOCIATE_RJ = 0x02, 0x03
_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
_SERVICE_USER, _NOT_SPECIFIED = 0x00, 0x00
_MAXIMUM_CONTEXTS = 128  # context IDs are the odd numbers 1..255
PDU_MARGIN = 64 << 10
"""What the peer may send in one PDU beyond the maximum we announce (none should; room for an
A-ASSOCIATE-AC of many contexts)."""
_REJECT_RESULTS = {0x01: "permanent", 0x02: "transient"}
_REJECT_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x01): "no reason given",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded",
}
_REJECT_SOURCES = {0x01: "service user", 0x02: "service provider (ACSE)", 0x03: "presentation"}


class RequestorError(Exception):
    """The association failed; the message names what happened, never a DICOM value."""


class ConnectFailed(RequestorError):
    """No TCP connection, or no TLS handshake, within the timeout."""


class AssociationRejected(RequestorError):
    """The peer answered the A-ASSOCIATE-RQ with A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result, self.source, self.reason = result, source, reason
        super().__init__(
            f"association rejected ({_REJECT_RESULTS.get(result, f'result {result}')}, by the "
            f"{_REJECT_SOURCES.get(source, f'source {source}')}: "
            f"{_REJECT_REASONS.get((source, reason), f'reason {reason}')})"
        )


class AssociationAborted(RequestorError):
    """The peer aborted the association or closed the connection."""


class AssociationClosed(RequestorError):
    """A request on an association that is no longer established (aborted, released)."""


class PeerTimeout(RequestorError):
    """The peer did not answer within the timeout (the association was aborted)."""


class ProtocolViolation(RequestorError):
    """The peer broke the upper-layer protocol (the association was aborted)."""


@dataclass(frozen=True, slots=True)
class RequestedContext:
    """A presentation context to propose; `scp_role` proposes the SCP role for it (the C-STOREs
    of a C-GET come back on such contexts)."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    scp_role: bool = False


def associate(
    host: str,
    port: int,
    *,
    calling_ae_title: str,
    called_ae_title: str,
    contexts: Sequence[RequestedContext],
    timeout: float,
    maximum_pdu: int,
    tls: ssl.SSLContext | None,
) -> tuple[socket.socket, Reader, dict[int, tuple[str, str]], int]:
    """Connect and associate: (socket, its reader, accepted context ID → (abstract syntax,
    transfer syntax), the peer's maximum PDU length or 0). Raises `ConnectFailed`,
    `AssociationRejected` or another `RequestorError` when no association results."""
    if not 1 <= len(contexts) <= _MAXIMUM_CONTEXTS:
        raise ValueError(f"1 to {_MAXIMUM_CONTEXTS} presentation contexts, got {len(contexts)}")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ConnectFailed(_connect_problem(exc)) from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=host)
            except (OSError, ValueError) as exc:
                raise ConnectFailed(f"TLS handshake failed: {_tls_problem(exc)}") from None
        requested = _presentation_contexts(contexts)
        roles = [_role(context.abstract_syntax) for context in contexts if context.scp_role]
        sock.sendall(_request_pdu(calling_ae_title, called_ae_title, requested, roles, maximum_pdu))
        reader = Reader(sock)
        pdu_type, length = reader.header()
        if length > maximum_pdu + PDU_MARGIN:
            raise ProtocolViolation(f"an answer of {length} bytes to the association request")
        body = reader.read(length)
        if pdu_type == _A_ASSOCIATE_RJ and len(body) >= 4:
            raise AssociationRejected(body[1], body[2], body[3])
        if pdu_type == A_ABORT:
            raise AssociationAborted("the peer aborted the association request")
        if pdu_type != _A_ASSOCIATE_AC:
            raise ProtocolViolation(f"PDU type 0x{pdu_type:02X} in answer to the request")
        accepted, peer_maximum = _accepted_contexts(
            bytes((pdu_type, 0)) + length.to_bytes(4, "big") + body, requested
        )
    except BaseException as exc:
        if isinstance(exc, ProtocolViolation):
            with contextlib.suppress(OSError):
                sock.sendall(abort_pdu(_SERVICE_USER, _NOT_SPECIFIED))
        with contextlib.suppress(OSError):
            sock.close()
        if isinstance(exc, TimeoutError):
            raise PeerTimeout("no answer to the association request in time") from None
        if isinstance(exc, PeerClosed | ConnectionError):
            raise AssociationAborted(
                "the peer closed the connection instead of answering the association request"
            ) from None
        if isinstance(exc, OSError) and not isinstance(exc, RequestorError):
            raise ConnectFailed(_connect_problem(exc)) from None
        raise
    return sock, reader, accepted, peer_maximum


def _presentation_contexts(contexts: Sequence[RequestedContext]) -> list[PresentationContext]:
    requested = []
    for number, wanted in enumerate(contexts):
        context = PresentationContext()
        context.context_id = 2 * number + 1
        context.abstract_syntax = wanted.abstract_syntax
        context.transfer_syntax = list(wanted.transfer_syntaxes)
        requested.append(context)
    return requested


def _role(sop_class_uid: str) -> SCP_SCU_RoleSelectionNegotiation:
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = sop_class_uid
    role.scu_role = False
    role.scp_role = True
    return role


def _request_pdu(
    calling: str,
    called: str,
    contexts: list[PresentationContext],
    roles: list[SCP_SCU_RoleSelectionNegotiation],
    maximum_pdu: int,
) -> bytes:
    maximum_length = MaximumLengthNotification()
    maximum_length.maximum_length_received = maximum_pdu
    implementation_uid = ImplementationClassUIDNotification()
    implementation_uid.implementation_class_uid = IMPLEMENTATION_UID
    implementation_version = ImplementationVersionNameNotification()
    implementation_version.implementation_version_name = IMPLEMENTATION_VERSION
    primitive = A_ASSOCIATE()
    primitive.application_context_name = _APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.presentation_context_definition_list = contexts
    primitive.user_information = [
        maximum_length,
        implementation_uid,
        implementation_version,
        *roles,
    ]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return bytes(request.encode())


def _accepted_contexts(
    pdu: bytes, requested: list[PresentationContext]
) -> tuple[dict[int, tuple[str, str]], int]:
    """The accepted contexts of an A-ASSOCIATE-AC (ID → abstract, transfer syntax) and the
    peer's maximum PDU length (0: none)."""
    try:
        accept = A_ASSOCIATE_AC()
        accept.decode(pdu)
        primitive = accept.to_primitive()
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in primitive.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
        }
        results = negotiate_as_requestor(
            requested, list(primitive.presentation_context_definition_results_list), roles
        )
        accepted = {
            int(context.context_id or 0): (
                str(context.abstract_syntax),
                str(context.transfer_syntax[0]),
            )
            for context in results
            if context.result == 0x00 and context.transfer_syntax
        }
        peer_maximum = int(primitive.maximum_length_received or 0)
    except Exception:  # pynetdicom raises many kinds on items it cannot read
        raise ProtocolViolation("an A-ASSOCIATE-AC that does not decode") from None
    if not accepted:
        raise ProtocolViolation("the peer accepted none of the presentation contexts")
    return accepted, peer_maximum


def _connect_problem(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "no connection in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or type(exc).__name__


def _tls_problem(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "no handshake in time"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return type(exc).__name__
