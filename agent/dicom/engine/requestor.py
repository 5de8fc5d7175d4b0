"""One association the agent requests (PULL): a blocking loop on the calling thread, on
pynetdicom's codec.

The requestor's side of the upper-layer state machine (PS3.8 9.2), as far as a query/retrieve
SCU needs it, with no thread or queue of its own: the thread that sends a request reads its
responses off the socket.

- Set-up (`agent.dicom.engine.association_request`): TCP (or TLS) connect, A-ASSOCIATE-RQ
  built and A-ASSOCIATE-AC read by pynetdicom's PDU classes, presentation contexts and SCP/SCU
  roles settled by its `negotiate_as_requestor`. An A-ASSOCIATE-RJ becomes
  `AssociationRejected` with its result, source and reason.
- Requests (C-ECHO, C-FIND, C-MOVE, C-GET, C-CANCEL) one at a time: the command set from
  pynetdicom's DIMSE message classes, the identifier from its dataset codec, sent as P-DATA-TF
  fragmented to the peer's maximum PDU length. Responses are read as they come, the usual
  ones parsed directly (`agent.dicom.engine.messages`); a C-FIND's identifiers are decoded per
  response; a C-GET's C-STORE sub-operations, arriving on this association, are handed to the
  `StoreCallback` (the agent's one C-STORE handler) and answered once the instance is durable.
- A caller that stops reading a C-FIND/C-MOVE/C-GET before its final response sends
  C-CANCEL and the remaining responses are read and dropped, so the association stays usable.
- End: A-RELEASE-RQ and its A-RELEASE-RP (`release`, never raises), or A-ABORT (`abort`, from
  any thread: shutdown). A-ABORT from the peer, a closed connection, a PDU not expected here,
  or silence past the timeout end the association with `RequestorError`s that say which.

Every wait (connect, TLS handshake, association answer, each response, release) is bounded by
one `timeout`, as pynetdicom's connection, ACSE, DIMSE and network timeouts are in the agent.
Log lines and errors carry AE titles, hosts, statuses and counts, never DICOM values.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

from pydicom.dataset import Dataset

from agent.dicom.engine.association_request import (
    PDU_MARGIN,
    AssociationAborted,
    AssociationClosed,
    AssociationRejected,
    ConnectFailed,
    PeerTimeout,
    ProtocolViolation,
    RequestedContext,
    RequestorError,
    associate,
)
from agent.dicom.engine.commands import (
    StoreRequest,
    decode_command,
    parse_store_request,
    store_response,
)
from agent.dicom.engine.messages import (
    C_ECHO_RSP_FIELD,
    C_FIND_RSP_FIELD,
    C_GET_RSP_FIELD,
    C_MOVE_RSP_FIELD,
    C_STORE_RQ_FIELD,
    Response,
    cancel_request,
    command_field,
    decode_identifier,
    echo_request,
    encode_identifier,
    find_request,
    get_request,
    move_request,
    parse_response,
)
from agent.dicom.engine.pdu import (
    A_ABORT,
    A_RELEASE_RQ,
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    P_DATA_TF,
    PeerClosed,
    Reader,
    abort_pdu,
    p_data_pdus,
    release_response_pdu,
)
from agent.dicom.file_meta import part10_header
from agent.dicom.status import Status

__all__ = [
    "AssociationAborted",
    "AssociationClosed",
    "AssociationRejected",
    "ConnectFailed",
    "PeerTimeout",
    "ProtocolViolation",
    "RequestedContext",
    "Requestor",
    "RequestorError",
    "StoreCallback",
]

_A_RELEASE_RP = 0x06
_SERVICE_USER, _SERVICE_PROVIDER = 0x00, 0x02
_NOT_SPECIFIED, _UNEXPECTED_PDU, _INVALID_PARAMETER = 0x00, 0x02, 0x06
# A command set is a few hundred bytes; an identifier of a response a few KiB.
_MAXIMUM_COMMAND = 64 << 10
_MAXIMUM_IDENTIFIER = 16 << 20
StoreCallback = Callable[[StoreRequest, str, bytearray, int, float], tuple[int, str | None]]
"""Makes one C-STORE of a C-GET durable: (request, transfer syntax UID, the Part-10 bytes, where
its data set starts, when it arrived) → (status, error comment)."""


@dataclass(slots=True)
class _Incoming:
    """A message whose command arrived and whose data set is on its way."""

    context_id: int
    command: bytes
    store: StoreRequest | None  # a C-STORE-RQ of a C-GET: its data set goes into `buffer`
    buffer: bytearray
    dataset_offset: int
    received_at: float


@dataclass(frozen=True, slots=True)
class _Message:
    context_id: int
    response: Response
    data_set: bytes | None


class Requestor:
    """An established association; `open` it, make requests one at a time, `release` it."""

    def __init__(
        self,
        sock: socket.socket,
        reader: Reader,
        *,
        timeout: float,
        maximum_pdu: int,
        peer_maximum_pdu: int,
        accepted: dict[int, tuple[str, str]],
        store: StoreCallback | None,
    ) -> None:
        """Use `open`."""
        self._sock = sock
        self._timeout = timeout
        self._maximum_received = maximum_pdu + PDU_MARGIN
        self._peer_maximum_pdu = peer_maximum_pdu
        self._accepted = accepted  # context ID → (abstract syntax, transfer syntax)
        self._store = store
        self._reader = reader
        self._send_lock = threading.Lock()
        self._message_id = 0
        self._busy = False
        self._established = True
        self._aborted_locally = False
        self._pdu_left = 0
        self._command = bytearray()
        self._command_context: int | None = None
        self._incoming: _Incoming | None = None

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        calling_ae_title: str,
        called_ae_title: str,
        contexts: Sequence[RequestedContext],
        timeout: float,
        maximum_pdu: int,
        tls: ssl.SSLContext | None = None,
        store: StoreCallback | None = None,
    ) -> Requestor:
        """Connect and associate; raise `ConnectFailed`, `AssociationRejected` or another
        `RequestorError` when no association results. `store` serves a C-GET's C-STOREs."""
        sock, reader, accepted, peer_maximum = associate(
            host,
            port,
            calling_ae_title=calling_ae_title,
            called_ae_title=called_ae_title,
            contexts=contexts,
            timeout=timeout,
            maximum_pdu=maximum_pdu,
            tls=tls,
        )
        return cls(
            sock,
            reader,
            timeout=timeout,
            maximum_pdu=maximum_pdu,
            peer_maximum_pdu=peer_maximum,
            accepted=accepted,
            store=store,
        )

    @property
    def is_established(self) -> bool:
        """Neither released nor aborted (by either side)."""
        return self._established

    def accepted_abstract_syntaxes(self) -> set[str]:
        """The abstract syntaxes of the accepted presentation contexts."""
        return {abstract for abstract, _ in self._accepted.values()}

    def echo(self, sop_class_uid: str) -> int | None:
        """C-ECHO; the response's status."""
        context_id, _ = self._context(sop_class_uid)
        message_id = self._begin()
        try:
            self._send_message(context_id, echo_request(message_id, sop_class_uid), None)
            message = self._response_to(message_id, C_ECHO_RSP_FIELD)
            return message.response.status
        finally:
            self._busy = False

    def find(
        self, identifier: Dataset, sop_class_uid: str
    ) -> Iterator[tuple[Response, Dataset | None]]:
        """C-FIND: each response with its decoded identifier (pending ones), the final one
        last. Closing the iterator early cancels the query (C-CANCEL)."""
        return self._operation(
            sop_class_uid,
            lambda message_id: find_request(message_id, sop_class_uid),
            identifier,
            C_FIND_RSP_FIELD,
            decode_pending=True,
        )

    def move(
        self, identifier: Dataset, sop_class_uid: str, destination: str
    ) -> Iterator[tuple[Response, Dataset | None]]:
        """C-MOVE to `destination`: each response (pending ones carry the sub-operation
        counts), the final one last. Closing the iterator early cancels the retrieval."""
        return self._operation(
            sop_class_uid,
            lambda message_id: move_request(message_id, sop_class_uid, destination),
            identifier,
            C_MOVE_RSP_FIELD,
        )

    def get(
        self, identifier: Dataset, sop_class_uid: str
    ) -> Iterator[tuple[Response, Dataset | None]]:
        """C-GET: as `move`; the instances arrive on this association and go to the store
        callback given to `open`."""
        if self._store is None:
            raise ValueError("a C-GET needs the store callback (give `store` to open)")
        return self._operation(
            sop_class_uid,
            lambda message_id: get_request(message_id, sop_class_uid),
            identifier,
            C_GET_RSP_FIELD,
        )

    def release(self) -> None:
        """A-RELEASE-RQ, wait (up to the timeout) for A-RELEASE-RP, close. Never raises."""
        if not self._established:
            self._close()
            return
        self._established = False
        try:
            self._sock.settimeout(self._timeout)
            self._send(bytes((A_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
            deadline = time.monotonic() + self._timeout
            while time.monotonic() < deadline:
                if self._pdu_left:
                    self._reader.skip(self._pdu_left)
                    self._pdu_left = 0
                pdu_type, length = self._reader.header()
                if pdu_type in (_A_RELEASE_RP, A_ABORT):
                    break
                if pdu_type == A_RELEASE_RQ:  # a release collision: answer it and go
                    self._send(release_response_pdu())
                    break
                if length > self._maximum_received:
                    break
                self._reader.skip(length)  # late P-DATA of an operation given up on
        except (OSError, PeerClosed, ssl.SSLError):
            pass
        finally:
            self._close()

    def abort(self) -> None:
        """A-ABORT and close, from any thread (shutdown); a read under way returns with
        `AssociationClosed`. Idempotent."""
        self._aborted_locally = True
        if self._established:
            self._established = False
            with contextlib.suppress(OSError), self._send_lock:
                self._sock.sendall(abort_pdu(_SERVICE_USER, _NOT_SPECIFIED))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._close()

    # Operations.

    def _operation(
        self,
        sop_class_uid: str,
        command: Callable[[int], bytes],
        identifier: Dataset,
        field: int,
        *,
        decode_pending: bool = False,
    ) -> Iterator[tuple[Response, Dataset | None]]:
        """Send the request at once (so a failure to send surfaces at the call), then read
        its responses as the caller iterates."""
        context_id, syntax = self._context(sop_class_uid)
        message_id = self._begin()
        try:
            encoded = encode_identifier(identifier, syntax)
            self._send_message(context_id, command(message_id), encoded)
        except BaseException:
            self._busy = False
            raise
        return self._responses(context_id, message_id, field, syntax, decode_pending)

    def _responses(
        self, context_id: int, message_id: int, field: int, syntax: str, decode_pending: bool
    ) -> Iterator[tuple[Response, Dataset | None]]:
        finished = False
        try:
            while True:
                message = self._response_to(message_id, field)
                response = message.response
                finished = not response.pending
                found = None
                if decode_pending and response.pending and message.data_set is not None:
                    try:
                        found = decode_identifier(message.data_set, syntax)
                    except Exception:  # pydicom raises many kinds on bytes it cannot read
                        self._fail(
                            ProtocolViolation("a C-FIND response identifier that does not decode")
                        )
                yield response, found
                if finished:
                    return
        finally:
            if not finished and self._established:
                self._cancel(context_id, message_id, field)
            self._busy = False

    def _cancel(self, context_id: int, message_id: int, field: int) -> None:
        """The caller stopped early: C-CANCEL, then drop responses up to the final one."""
        try:
            self._send_message(context_id, cancel_request(message_id), None)
            while self._response_to(message_id, field).response.pending:
                pass
        except RequestorError:
            pass  # the association is aborted already; nothing more to tidy

    def _response_to(self, message_id: int, field: int) -> _Message:
        while True:
            message = self._next_message()
            response = message.response
            if response.field != field or response.message_id_being_responded_to != message_id:
                self._fail(
                    ProtocolViolation(
                        f"a response 0x{response.field:04X} to message "
                        f"{response.message_id_being_responded_to} while waiting for "
                        f"0x{field:04X} to {message_id}"
                    )
                )
            if response.status is None:
                self._fail(ProtocolViolation("a response without a status"))
            return message

    # Reading.

    def _next_message(self) -> _Message:
        """The next whole response; C-STOREs of a C-GET are served on the way."""
        reader = self._reader
        try:
            while True:
                if self._pdu_left == 0:
                    self._next_pdu()
                    continue
                if self._pdu_left < 6:
                    self._fail(ProtocolViolation("a P-DATA-TF item shorter than its header"))
                item_length, context_id, control = reader.pdv_header()
                self._pdu_left -= 6
                size = item_length - 2
                if size < 0 or size > self._pdu_left:
                    self._fail(ProtocolViolation("a PDV longer than its P-DATA-TF"))
                if context_id not in self._accepted:
                    self._fail(ProtocolViolation(f"a PDV for context {context_id}, not accepted"))
                self._pdu_left -= size
                last = bool(control & 0x02)
                if control & 0x01:
                    message = self._command_fragment(context_id, size, last)
                else:
                    message = self._data_fragment(context_id, size, last)
                if message is not None:
                    return message
        except TimeoutError:
            self._fail(PeerTimeout(f"no answer within {self._timeout:g} s"))
        except (PeerClosed, ConnectionError, ssl.SSLError, OSError):
            if self._aborted_locally:
                raise AssociationClosed(
                    "the association was aborted (the agent is stopping)"
                ) from None
            self._established = False
            self._close()
            raise AssociationAborted("the peer closed the connection") from None

    def _next_pdu(self) -> None:
        pdu_type, length = self._reader.header()
        if pdu_type == P_DATA_TF:
            if length > self._maximum_received:
                self._fail(ProtocolViolation(f"a PDU of {length} bytes"), _INVALID_PARAMETER)
            self._pdu_left = length
            return
        if pdu_type == A_ABORT:
            body = self._reader.read(min(length, 4))
            source, reason = (body[2], body[3]) if len(body) == 4 else (-1, -1)
            self._established = False
            self._close()
            raise AssociationAborted(
                f"the peer aborted the association (A-ABORT source {source}, reason {reason})"
            )
        if pdu_type == A_RELEASE_RQ:
            self._reader.skip(min(length, 4))
            self._established = False
            with contextlib.suppress(OSError):
                self._send(release_response_pdu())
            self._close()
            raise AssociationAborted("the peer released the association in the middle of a request")
        self._fail(ProtocolViolation(f"PDU type 0x{pdu_type:02X} on an established association"))

    def _command_fragment(self, context_id: int, size: int, last: bool) -> _Message | None:
        if self._incoming is not None:
            self._fail(ProtocolViolation("a command fragment in the middle of a data set"))
        if self._command_context not in (None, context_id):
            self._fail(ProtocolViolation("command fragments on two presentation contexts"))
        if len(self._command) + size > _MAXIMUM_COMMAND:
            self._fail(ProtocolViolation("a command set over 64 KiB"), _INVALID_PARAMETER)
        self._command_context = context_id
        self._command += self._reader.read(size)
        if not last:
            return None
        command = bytes(self._command)
        self._command.clear()
        self._command_context = None
        return self._on_command(context_id, command)

    def _on_command(self, context_id: int, command: bytes) -> _Message | None:
        if command_field(command) == C_STORE_RQ_FIELD and self._store is not None:
            request = parse_store_request(command)
            if request is None:
                decoded = decode_command(command)
                try:
                    request = None if decoded is None else decoded.store_request()
                except Exception:  # pydicom converts values lazily and raises many kinds
                    request = None
            if request is None:
                self._fail(ProtocolViolation("a C-STORE-RQ that does not decode"))
            if not request.has_data_set:
                self._answer_store(
                    context_id, request, Status.CANNOT_UNDERSTAND, "the request has no data set"
                )
                return None
            _, syntax = self._accepted[context_id]
            try:
                header = part10_header(
                    sop_class_uid=request.sop_class_uid,
                    sop_instance_uid=request.sop_instance_uid,
                    transfer_syntax_uid=syntax,
                    implementation_class_uid=IMPLEMENTATION_UID,
                    implementation_version_name=IMPLEMENTATION_VERSION,
                    source_ae_title=None,
                )
            except ValueError:
                self._fail(ProtocolViolation("a C-STORE-RQ with an invalid UID"))
            self._incoming = _Incoming(
                context_id, command, request, bytearray(header), len(header), time.time()
            )
            return None
        response = parse_response(command)
        if response is None:
            self._fail(ProtocolViolation("a command set that does not decode", _INVALID_PARAMETER))
        if not response.has_data_set:
            return _Message(context_id, response, None)
        self._incoming = _Incoming(context_id, command, None, bytearray(), 0, time.time())
        return None

    def _data_fragment(self, context_id: int, size: int, last: bool) -> _Message | None:
        incoming = self._incoming
        if incoming is None:
            self._fail(ProtocolViolation("a data set fragment without its command"))
        if incoming.context_id != context_id:
            self._fail(ProtocolViolation("a data set fragment on another presentation context"))
        buffer = incoming.buffer
        if incoming.store is None and len(buffer) + size > _MAXIMUM_IDENTIFIER:
            self._fail(ProtocolViolation("a response identifier over 16 MiB"), _INVALID_PARAMETER)
        start = len(buffer)
        buffer.extend(bytes(size))
        with memoryview(buffer) as whole:
            self._reader.read_into(whole[start:])
        if not last:
            return None
        self._incoming = None
        if incoming.store is not None:
            self._serve_store(incoming, incoming.store)
            return None
        response = parse_response(incoming.command)
        assert response is not None  # parsed once already in _on_command
        return _Message(context_id, response, bytes(buffer))

    def _serve_store(self, incoming: _Incoming, request: StoreRequest) -> None:
        assert self._store is not None
        _, syntax = self._accepted[incoming.context_id]
        status, comment = self._store(
            request, syntax, incoming.buffer, incoming.dataset_offset, incoming.received_at
        )
        self._answer_store(incoming.context_id, request, status, comment)

    def _answer_store(
        self, context_id: int, request: StoreRequest, status: int, comment: str | None
    ) -> None:
        response = store_response(
            message_id=request.message_id,
            sop_class_uid=request.sop_class_uid,
            sop_instance_uid=request.sop_instance_uid,
            status=status,
            error_comment=None if comment is None else comment[:64],
        )
        self._send_message(context_id, response, None)

    # Writing and helpers.

    def _begin(self) -> int:
        if not self._established:
            raise AssociationClosed("the association is no longer established")
        if self._busy:
            raise RuntimeError("one request at a time: finish reading the previous responses")
        self._busy = True
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _context(self, abstract_syntax: str) -> tuple[int, str]:
        for context_id, (abstract, syntax) in self._accepted.items():
            if abstract == abstract_syntax:
                return context_id, syntax
        raise AssociationClosed(f"the peer accepted no presentation context for {abstract_syntax}")

    def _send_message(self, context_id: int, command: bytes, data_set: bytes | None) -> None:
        maximum = self._peer_maximum_pdu
        pdus = list(p_data_pdus(context_id, command, command=True, maximum_pdu=maximum))
        if data_set is not None:
            pdus += p_data_pdus(context_id, data_set, command=False, maximum_pdu=maximum)
        try:
            self._send(b"".join(pdus))
        except OSError:
            if self._aborted_locally:
                raise AssociationClosed(
                    "the association was aborted (the agent is stopping)"
                ) from None
            self._established = False
            self._close()
            raise AssociationAborted("the connection broke while sending a request") from None

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def _fail(self, error: RequestorError, reason: int = _UNEXPECTED_PDU) -> NoReturn:
        """Abort the association as the service provider would, and raise `error`."""
        if self._aborted_locally:
            raise AssociationClosed("the association was aborted (the agent is stopping)")
        if self._established:
            self._established = False
            with contextlib.suppress(OSError), self._send_lock:
                self._sock.sendall(abort_pdu(_SERVICE_PROVIDER, reason))
        self._close()
        raise error

    def _close(self) -> None:
        self._established = False
        with contextlib.suppress(OSError):
            self._sock.close()
