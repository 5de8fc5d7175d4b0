"""One association of the lean intake engine: a blocking loop on the thread that owns its socket.

The acceptor's side of the upper-layer state machine (PS3.8 9.2), as far as an SCP of storage
and verification needs it:

- Sta2 (connection open, ARTIM running): the first PDU must be an A-ASSOCIATE-RQ within the
  ARTIM timeout. Anything else is answered with A-ABORT; silence closes the connection. The
  request is checked (allowlist, called AE title, association cap) and answered with
  A-ASSOCIATE-RJ or, after pynetdicom's presentation negotiation, A-ASSOCIATE-AC.
- Sta6 (established): P-DATA-TF carries DIMSE messages. A C-STORE-RQ's data set fragments are
  read straight into the Part-10 buffer of the instance (no re-encoding, one copy), a large
  instance's into its spool slot as they arrive (engine/incoming.py), and the C-STORE-RSP goes
  out once the instance is durable. C-ECHO is answered Success. A-RELEASE-RQ
  is answered A-RELEASE-RP; A-ABORT ends the association, dropping a half-received instance.
- Protocol errors (a PDU type not expected here, an unknown one, a PDV for a context not
  accepted, a data set fragment without its command, malformed lengths, a PDU longer than
  allowed) end in A-ABORT from the service provider; the listener serves the next association
  regardless. A peer that goes silent: between messages the network timeout, in the middle of
  one the DIMSE timeout (whichever is shorter), end the association with A-ABORT.
- Sta13 (after A-ASSOCIATE-RJ or A-RELEASE-RP): wait up to ARTIM for the peer to close.

Log lines carry AE titles, hosts, statuses and counts, never DICOM values.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.dicom.access import REJECT, PeerAccess, source_of
from agent.dicom.association_limit import AssociationLimit
from agent.dicom.engine.commands import (
    C_ECHO_RQ_FIELD,
    C_STORE_RQ_FIELD,
    StoreRequest,
    decode_command,
    echo_response,
    parse_store_request,
    store_response,
)
from agent.dicom.engine.incoming import SPILL_BYTES, IncomingInstance, StoreRefusal
from agent.dicom.engine.pdu import (
    A_ABORT,
    A_ASSOCIATE_RQ_TYPE,
    A_RELEASE_RQ,
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    KNOWN_TYPES,
    P_DATA_TF,
    Negotiated,
    PeerClosed,
    Reader,
    abort_pdu,
    accept,
    p_data_pdus,
    read_request,
    reject_pdu,
    release_response_pdu,
)
from agent.dicom.file_meta import part10_header
from agent.dicom.status import Status
from agent.dicom.store_handler import AssociationTally, StoreHandler
from agent.dicom.timeouts import ScpTimeouts
from agent.dicom.tls import TlsContexts, handshake_problem
from agent.rejections import RejectionCounter, RejectionReason
from agent.spool import Spool

__all__ = ["AcceptorServices", "Association", "ProtocolError"]

_log = structlog.get_logger("agent.dicom.scp")

_SERVICE_USER, _SERVICE_PROVIDER = 0x00, 0x02
_NOT_SPECIFIED, _UNRECOGNISED_PDU, _UNEXPECTED_PDU = 0x00, 0x01, 0x02
_INVALID_PARAMETER = 0x06
# A command set is a few hundred bytes; more than this is no command set.
_MAXIMUM_COMMAND = 64 << 10


class ProtocolError(Exception):
    """The peer broke the upper-layer protocol; the association is aborted with `reason`."""

    def __init__(self, message: str, reason: int = _UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AcceptorServices:
    """What every association of one listener shares."""

    access: PeerAccess
    limit: AssociationLimit
    rejections: RejectionCounter
    handler: StoreHandler
    spool: Spool
    timeouts: ScpTimeouts
    tls: TlsContexts | None
    maximum_pdu: int  # announced in the A-ASSOCIATE-AC
    maximum_received_pdu: int  # a longer PDU closes the connection before its body is read
    # Written into the file meta of received instances: those of the codec we build on, as
    # the pynetdicom path writes them.
    implementation_uid: str = IMPLEMENTATION_UID
    implementation_version: str = IMPLEMENTATION_VERSION
    # An instance larger than this goes to its spool slot as it arrives (engine/incoming.py).
    spill_bytes: int = SPILL_BYTES


class Association:
    """One connection, from the first byte to the close; `serve` runs it on its own thread."""

    def __init__(
        self,
        sock: socket.socket,
        host: str,
        services: AcceptorServices,
        on_established: Callable[[Association], None] | None = None,
    ) -> None:
        self._sock: socket.socket = sock
        self._host = host
        self._services = services
        self._on_established = on_established
        self._send_lock = threading.Lock()
        self._closing = False
        self.established = False
        self.tally = AssociationTally(peer_host=host)
        self._negotiated: Negotiated | None = None
        self._reader: Reader
        self._command = bytearray()
        self._command_context: int | None = None
        self._incoming: IncomingInstance | None = None
        # The last stored instance's buffer, reused by the next (see IncomingInstance).
        self._buffer = bytearray()

    def serve(self) -> None:
        """Run the association to its end; never raises."""
        slot: int | None = None
        try:
            if not self._secure():
                return
            slot = self._associate()
            if slot is None and not self.established:
                return
            self._established_loop()
        except ProtocolError as exc:
            _log.warning("association aborted", reason=str(exc), **self.tally.peer_fields())
            self._send_abort(_SERVICE_PROVIDER, exc.reason)
        except (PeerClosed, ConnectionError):
            if self._incoming is not None and not self._closing:
                _log.warning(
                    "association aborted",
                    reason="the connection closed in the middle of an instance",
                    **self.tally.peer_fields(),
                )
        except TimeoutError:
            if not self._closing:
                _log.warning(
                    "association aborted",
                    reason="the peer went silent past its timeout",
                    **self.tally.peer_fields(),
                )
                if self.established:  # ARTIM before the request: close only (AA-2)
                    self._send_abort(_SERVICE_PROVIDER, _NOT_SPECIFIED)
        except (OSError, ssl.SSLError) as exc:
            if not self._closing:
                _log.warning(
                    "association aborted", reason=type(exc).__name__, **self.tally.peer_fields()
                )
        except Exception:
            _log.exception("association failed", **self.tally.peer_fields())
            self._send_abort(_SERVICE_PROVIDER, _NOT_SPECIFIED)
        finally:
            if self._incoming is not None:  # never answered: its slot goes back empty
                self._incoming.discard()
                self._incoming = None
            self.established = False
            if slot is not None:
                self._services.limit.release(slot)
            with contextlib.suppress(OSError):
                self._sock.close()
            self._services.handler.closed(self.tally)

    def abort(self) -> None:
        """End the association from another thread (the listener stopping): A-ABORT, then
        shut the socket so the loop's blocking read returns."""
        self._closing = True
        self._send_abort(_SERVICE_USER, _NOT_SPECIFIED)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # Sta1 → Sta2: the TLS handshake, if any, under ARTIM.

    def _secure(self) -> bool:
        tls = self._services.tls
        self._sock.settimeout(self._services.timeouts.artim)
        if tls is None:
            return True
        try:
            self._sock = tls.server().wrap_socket(self._sock, server_side=True)
        except (OSError, ValueError) as exc:
            self._services.rejections.record(
                RejectionReason.tls_handshake_failed, source_of(self._host)
            )
            _log.warning(
                "tls handshake failed", peer_host=self._host, reason=handshake_problem(exc)
            )
            return False
        return True

    # Sta2 → Sta6 or Sta13.

    def _associate(self) -> int | None:
        """Read and answer the A-ASSOCIATE-RQ; the cap's slot when accepted, else None."""
        services = self._services
        self._reader = reader = Reader(self._sock)
        pdu_type, length = reader.header()
        if pdu_type != A_ASSOCIATE_RQ_TYPE:
            reason = _UNEXPECTED_PDU if pdu_type in KNOWN_TYPES else _UNRECOGNISED_PDU
            raise ProtocolError(f"PDU type 0x{pdu_type:02X} before an association", reason)
        self._check_length(length)
        pdu = bytes((pdu_type, 0)) + length.to_bytes(4, "big") + reader.read(length)
        try:
            request = read_request(pdu)
        except Exception:  # pynetdicom raises many kinds on items it cannot read
            raise ProtocolError(
                "an A-ASSOCIATE-RQ that does not decode", _INVALID_PARAMETER
            ) from None
        calling, called = request.calling_ae_title, request.called_ae_title
        self.tally.peer_ae = calling
        refusal = services.access.refusal(calling=calling, called=called, host=self._host)
        slot = None
        if refusal is None:
            slot = services.limit.acquire()
            if slot is None:
                refusal = RejectionReason.association_limit
        if refusal is not None:
            services.rejections.record(refusal, source_of(self._host))
            _log.warning(
                "association rejected", peer_ae=calling, peer_host=self._host, reason=refusal
            )
            self._send(reject_pdu(*REJECT[refusal]))
            self._await_close()
            return None
        try:
            negotiated = accept(request, services.maximum_pdu)
        except BaseException:
            services.limit.release(slot)  # type: ignore[arg-type]
            raise
        if negotiated.user_identity_offered:
            _log.info(
                "user identity not verified",
                reason="the allowlist decides who may store; the association is accepted",
                peer_ae=calling,
                peer_host=self._host,
            )
        self._negotiated = negotiated
        self._send(negotiated.accept_pdu)
        self.established = True
        self._sock.settimeout(services.timeouts.network)
        if self._on_established is not None:
            self._on_established(self)
        return slot

    # Sta6.

    def _established_loop(self) -> None:
        timeouts = self._services.timeouts
        in_message_timeout = min(timeouts.dimse, timeouts.network)
        idle = True
        while True:
            busy = self._incoming is not None or bool(self._command)
            if busy == idle:  # only when it changes: settimeout is a system call with TLS
                idle = not busy
                self._sock.settimeout(in_message_timeout if busy else timeouts.network)
            pdu_type, length = self._reader.header()
            if pdu_type == P_DATA_TF:
                self._check_length(length)
                self._p_data(length)
            elif pdu_type == A_RELEASE_RQ:
                self._reader.skip(min(length, 4))
                self._send(release_response_pdu())
                self._await_close()
                return
            elif pdu_type == A_ABORT:
                if self._incoming is not None:
                    _log.warning(
                        "association aborted by the peer",
                        reason="A-ABORT in the middle of an instance; nothing of it was stored",
                        **self.tally.peer_fields(),
                    )
                return
            elif pdu_type in KNOWN_TYPES:
                raise ProtocolError(f"PDU type 0x{pdu_type:02X} on an established association")
            else:
                raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", _UNRECOGNISED_PDU)

    def _p_data(self, length: int) -> None:
        assert self._negotiated is not None
        accepted = self._negotiated.transfer_syntaxes
        reader = self._reader
        remaining = length
        while remaining > 0:
            if remaining < 6:
                raise ProtocolError("a P-DATA-TF item shorter than its header", _INVALID_PARAMETER)
            item_length, context_id, control = reader.pdv_header()
            remaining -= 6
            size = item_length - 2
            if size < 0 or size > remaining:
                raise ProtocolError("a PDV longer than its P-DATA-TF", _INVALID_PARAMETER)
            if context_id not in accepted:
                raise ProtocolError(f"a PDV for presentation context {context_id}, not accepted")
            remaining -= size
            last = bool(control & 0x02)
            if control & 0x01:
                self._command_fragment(context_id, size, last)
            else:
                self._data_fragment(context_id, size, last)

    def _command_fragment(self, context_id: int, size: int, last: bool) -> None:
        if self._incoming is not None:
            raise ProtocolError("a command fragment in the middle of a data set")
        if self._command_context not in (None, context_id):
            raise ProtocolError("command fragments on two presentation contexts")
        if len(self._command) + size > _MAXIMUM_COMMAND:
            raise ProtocolError("a command set over 64 KiB", _INVALID_PARAMETER)
        self._command_context = context_id
        self._command += self._reader.read(size)
        if last:
            command = bytes(self._command)
            self._command.clear()
            self._command_context = None
            self._on_command(context_id, command)

    def _data_fragment(self, context_id: int, size: int, last: bool) -> None:
        incoming = self._incoming
        if incoming is None:
            raise ProtocolError("a data set fragment without its command")
        if incoming.context_id != context_id:
            raise ProtocolError("a data set fragment on another presentation context")
        incoming.receive(self._reader, size, self._services.spool)
        if last:
            self._incoming = None
            self._on_data_set(incoming)

    def _on_command(self, context_id: int, command: bytes) -> None:
        request = parse_store_request(command)
        if request is None:
            decoded = decode_command(command)
            if decoded is None:
                raise ProtocolError("a command set that does not decode", _INVALID_PARAMETER)
            try:
                request = decoded.store_request()
            except Exception:  # pydicom converts values lazily and raises many kinds
                raise ProtocolError(
                    "a command set whose values do not decode", _INVALID_PARAMETER
                ) from None
            if request is None:
                if decoded.field == C_ECHO_RQ_FIELD and not decoded.has_data_set:
                    message_id = int(decoded.dataset.get("MessageID", 0))
                    sop_class = str(decoded.dataset.get("AffectedSOPClassUID", ""))
                    self._respond(context_id, echo_response(message_id, sop_class))
                    return
                if decoded.field == C_STORE_RQ_FIELD:
                    raise ProtocolError(
                        "a C-STORE-RQ without a usable Message ID or SOP UIDs", _INVALID_PARAMETER
                    )
                raise ProtocolError(f"command 0x{decoded.field:04X}, which this SCP does not offer")
        assert self._negotiated is not None
        received_at = time.time()
        if not request.has_data_set:
            self._answer_store(
                context_id,
                request,
                Status.CANNOT_UNDERSTAND,
                "the C-STORE request has no data set",
            )
            return
        syntax = self._negotiated.transfer_syntaxes[context_id]
        refusal: StoreRefusal | None = None
        try:
            header = part10_header(
                sop_class_uid=request.sop_class_uid,
                sop_instance_uid=request.sop_instance_uid,
                transfer_syntax_uid=syntax,
                implementation_class_uid=self._services.implementation_uid,
                implementation_version_name=self._services.implementation_version,
                source_ae_title=self.tally.peer_ae,
            )
        except ValueError:
            header = b""
            refusal = StoreRefusal(Status.CANNOT_UNDERSTAND, "a UID of the request is invalid")
        self._incoming = IncomingInstance(
            request=request,
            context_id=context_id,
            transfer_syntax=syntax,
            header=header,
            received_at=received_at,
            buffer=self._buffer,
            spill_bytes=self._services.spill_bytes,
            refusal=refusal,
        )

    def _on_data_set(self, incoming: IncomingInstance) -> None:
        request = incoming.request
        if incoming.refusal is not None:
            self.tally.failed += 1
            self._answer_store(
                incoming.context_id, request, incoming.refusal.status, incoming.refusal.comment
            )
            return
        services = self._services
        try:
            status, comment = services.handler.handle(
                self.tally, lambda: incoming.store(services.spool), request.sop_class_uid
            )
        finally:
            incoming.discard()  # a no-op unless the store failed before taking over the slot
        # Kept for the next instance only after a store that went through: a failure's
        # traceback may still hold a view of it, and a buffer with views cannot grow.
        self._buffer = incoming.buffer if status is Status.SUCCESS else bytearray()
        self._answer_store(incoming.context_id, request, status, comment)

    def _answer_store(
        self, context_id: int, request: StoreRequest, status: Status, comment: str | None
    ) -> None:
        response = store_response(
            message_id=request.message_id,
            sop_class_uid=request.sop_class_uid,
            sop_instance_uid=request.sop_instance_uid,
            status=int(status),
            error_comment=None if comment is None else comment[:64],
        )
        self._respond(context_id, response)

    def _respond(self, context_id: int, command: bytes) -> None:
        assert self._negotiated is not None
        maximum = self._negotiated.peer_maximum_pdu
        self._send(b"".join(p_data_pdus(context_id, command, command=True, maximum_pdu=maximum)))

    # Helpers.

    def _check_length(self, length: int) -> None:
        limit = self._services.maximum_received_pdu
        if length > limit:
            _log.warning(
                "dicom connection closed",
                peer_host=self._host,
                reason=f"a PDU of {length} bytes, over the {limit} allowed",
            )
            raise ProtocolError(f"a PDU of {length} bytes", _INVALID_PARAMETER)

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def _send_abort(self, source: int, reason: int) -> None:
        with contextlib.suppress(OSError), self._send_lock:
            self._sock.sendall(abort_pdu(source, reason))

    def _await_close(self) -> None:
        """Sta13: give the peer up to ARTIM to close its end, then close ours."""
        self._closing = True
        self._sock.settimeout(self._services.timeouts.artim)
        with contextlib.suppress(OSError):
            while self._sock.recv(4096):
                pass
