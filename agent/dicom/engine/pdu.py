"""Upper-layer PDUs of the acceptor (PS3.8 9.3): reading them off a socket, the few fixed
ones written directly, and association set-up through pynetdicom's PDU classes and
presentation-context negotiation.

A P-DATA-TF and its PDV items are a handful of fixed header bytes around the data, so they are
read and written here (tested against pynetdicom's `P_DATA_TF`); an A-ASSOCIATE-RQ/AC/RJ, with
its variable items, sub-items and negotiation rules, is pynetdicom's.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from types import MappingProxyType

from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    StoragePresentationContexts,
)
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

__all__ = [
    "A_ABORT",
    "A_ASSOCIATE_RQ_TYPE",
    "A_RELEASE_RQ",
    "IMPLEMENTATION_UID",
    "IMPLEMENTATION_VERSION",
    "KNOWN_TYPES",
    "P_DATA_TF",
    "AssociationRequest",
    "Negotiated",
    "PeerClosed",
    "Reader",
    "abort_pdu",
    "accept",
    "decode_request",
    "negotiate",
    "p_data_pdus",
    "prepare_negotiation",
    "read_request",
    "reject_pdu",
    "release_response_pdu",
    "storage_sop_classes",
]

IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
IMPLEMENTATION_VERSION = str(PYNETDICOM_IMPLEMENTATION_VERSION)
A_ASSOCIATE_RQ_TYPE = 0x01
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_ABORT = 0x07
KNOWN_TYPES = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07})
_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")
_RECEIVE_BUFFER = 256 << 10
_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# Where an A-ASSOCIATE-RQ's items begin: header 6, version and reserved 4, AE titles 32,
# reserved 32.
_REQUEST_ITEMS_OFFSET = 74


class PeerClosed(Exception):
    """The peer closed the connection (or it broke) before a whole PDU arrived."""


class Reader:
    """Reads whole PDU parts off a socket through one buffer; large data goes straight into
    the caller's buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray(_RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0

    def header(self) -> tuple[int, int]:
        """The next PDU's (type, length)."""
        data = self.read(_HEADER.size)
        pdu_type, length = _HEADER.unpack(data)
        return pdu_type, length

    def pdv_header(self) -> tuple[int, int, int]:
        """The next PDV item's (item length, context ID, message control header)."""
        return _PDV_HEADER.unpack(self.read(_PDV_HEADER.size))

    def read(self, count: int) -> bytes:
        """Exactly `count` bytes."""
        if count > len(self._buffer):
            target = bytearray(count)
            self.read_into(memoryview(target))
            return bytes(target)
        while self._end - self._start < count:
            self._fill()
        data = bytes(self._view[self._start : self._start + count])
        self._start += count
        return data

    def read_into(self, target: memoryview) -> None:
        """Fill `target` exactly."""
        buffered = min(self._end - self._start, len(target))
        target[:buffered] = self._view[self._start : self._start + buffered]
        self._start += buffered
        filled = buffered
        while filled < len(target):
            remaining = len(target) - filled
            if remaining >= len(self._buffer) // 2:
                received = self._sock.recv_into(target[filled:])
                if not received:
                    raise PeerClosed
                filled += received
                continue
            self._fill()
            taken = min(self._end - self._start, remaining)
            target[filled : filled + taken] = self._view[self._start : self._start + taken]
            self._start += taken
            filled += taken

    def skip(self, count: int) -> None:
        """Read and drop `count` bytes."""
        while count:
            if self._start == self._end:
                self._fill()
            taken = min(self._end - self._start, count)
            self._start += taken
            count -= taken

    def _fill(self) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buffer):
            kept = self._end - self._start
            self._view[:kept] = self._view[self._start : self._end]
            self._start, self._end = 0, kept
        received = self._sock.recv_into(self._view[self._end :])
        if not received:
            raise PeerClosed
        self._end += received


def p_data_pdus(
    context_id: int, data: bytes, *, command: bool, maximum_pdu: int
) -> Iterator[bytes]:
    """A message part (command or data set) as P-DATA-TF PDUs of one PDV each, fragmented as
    pynetdicom fragments (`maximum_pdu` is the peer's maximum PDU length; 0 = unlimited)."""
    step = len(data) if maximum_pdu == 0 else max(1, maximum_pdu - 6)
    kind = 0x01 if command else 0x00
    offset = 0
    while True:
        fragment = data[offset : offset + step]
        offset += len(fragment)
        last = offset >= len(data)
        control = kind | (0x02 if last else 0x00)
        item = _PDV_HEADER.pack(len(fragment) + 2, context_id, control) + fragment
        yield _HEADER.pack(P_DATA_TF, len(item)) + item
        if last:
            return


def abort_pdu(source: int, reason: int) -> bytes:
    """An A-ABORT: `source` 0 (service user) or 2 (service provider), with `reason`."""
    return _HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


def release_response_pdu() -> bytes:
    """An A-RELEASE-RP."""
    return _HEADER.pack(0x06, 4) + b"\x00\x00\x00\x00"


# Distinct A-ASSOCIATE-RQs remembered with their decoding and negotiation. A PACS or scanner
# sends the same bytes association after association, and decoding plus negotiating Orthanc's
# 126 presentation contexts costs ~20 ms of CPU: a fifth of the agent's CPU in a C-MOVE of 100
# instances. Such a request is ~9 KB and its decoding ~100 KB; larger requests are decoded each
# time, so that whoever can connect (the allowlist is asked after the decoding) cannot make
# the acceptor hold 16 decoded megabyte-sized requests. A peer that varies its requests only
# evicts others.
_REQUESTS_REMEMBERED = 16
_REMEMBERED_REQUEST_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """A decoded A-ASSOCIATE-RQ, identified by its bytes.

    `primitive` is shared by every association that sent the same bytes: read it, never
    change it.
    """

    pdu: bytes
    calling_ae_title: str
    called_ae_title: str
    primitive: A_ASSOCIATE = field(compare=False, repr=False)


def read_request(pdu: bytes) -> AssociationRequest:
    """`decode_request`, remembered for the bytes of recent requests; raises as it does."""
    if len(pdu) > _REMEMBERED_REQUEST_BYTES:
        return _read_request(pdu)
    return _remembered_request(pdu)


def accept(request: AssociationRequest, maximum_pdu: int) -> Negotiated:
    """`negotiate`, remembered for recent requests: the answer depends only on the request's
    bytes, `maximum_pdu` and the contexts this process supports, which never change."""
    if len(request.pdu) > _REMEMBERED_REQUEST_BYTES:
        return negotiate(request.primitive, maximum_pdu)
    return _remembered_negotiation(request, maximum_pdu)


def _read_request(pdu: bytes) -> AssociationRequest:
    primitive = decode_request(pdu)
    return AssociationRequest(
        pdu=pdu,
        calling_ae_title=str(primitive.calling_ae_title or "").strip(),
        called_ae_title=str(primitive.called_ae_title or "").strip(),
        primitive=primitive,
    )


_remembered_request = lru_cache(maxsize=_REQUESTS_REMEMBERED)(_read_request)


@lru_cache(maxsize=_REQUESTS_REMEMBERED)
def _remembered_negotiation(request: AssociationRequest, maximum_pdu: int) -> Negotiated:
    return negotiate(request.primitive, maximum_pdu)


def decode_request(pdu: bytes) -> A_ASSOCIATE:
    """An A-ASSOCIATE-RQ PDU (header included) as pynetdicom's primitive; raises on bytes
    that do not decode or lack an item PS3.8 9.3.2 makes mandatory."""
    _check_request_items(pdu)
    request = A_ASSOCIATE_RQ()
    request.decode(pdu)
    return request.to_primitive()


def _check_request_items(pdu: bytes) -> None:
    """Walk the request's variable items and user-information sub-items by their declared
    lengths: pynetdicom's decoder slices past the end of a truncated PDU without complaint,
    so a PDU whose length field cuts an item short would otherwise decode into a smaller,
    acceptable request. The application context, a presentation context and the user
    information item with its Maximum Length sub-item must all be there (PS3.8 9.3.2, D.1).
    """
    found = list(_items(pdu, _REQUEST_ITEMS_OFFSET, len(pdu)))
    kinds = [item_type for item_type, _ in found]
    if 0x10 not in kinds or 0x20 not in kinds or kinds.count(0x50) != 1:
        raise ValueError("an A-ASSOCIATE-RQ without its mandatory items")
    start, end = dict(found)[0x50]
    if 0x51 not in dict(_items(pdu, start, end)):
        raise ValueError("an A-ASSOCIATE-RQ without a Maximum Length sub-item")


def _items(pdu: bytes, offset: int, end: int) -> Iterator[tuple[int, tuple[int, int]]]:
    """(item type, (value start, value end)) of each item in `pdu[offset:end]`; raises when
    an item's declared length runs past `end`."""
    while offset < end:
        if offset + 4 > end:
            raise ValueError("an item header cut short")
        item_type = pdu[offset]
        length = int.from_bytes(pdu[offset + 2 : offset + 4], "big")
        value = offset + 4
        if value + length > end:
            raise ValueError("an item longer than what holds it")
        yield item_type, (value, value + length)
        offset = value + length


def reject_pdu(result: int, source: int, diagnostic: int) -> bytes:
    """An A-ASSOCIATE-RJ, through pynetdicom's codec."""
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = diagnostic
    rejection = A_ASSOCIATE_RJ()
    rejection.from_primitive(primitive)
    return bytes(rejection.encode())


@dataclass(frozen=True, slots=True)
class Negotiated:
    """An accepted association: its contexts, the peer's limit, and the A-ASSOCIATE-AC.

    Read-only: `accept` hands the same one to every association that sent the same request.
    """

    transfer_syntaxes: Mapping[int, str]  # accepted context ID → transfer syntax UID
    abstract_syntaxes: Mapping[int, str]  # accepted context ID → abstract syntax UID
    peer_maximum_pdu: int  # 0: no limit
    accept_pdu: bytes
    user_identity_offered: bool
    extended_negotiation_refused: bool


def negotiate(request: A_ASSOCIATE, maximum_pdu: int) -> Negotiated:
    """Negotiate presentation contexts (and SCP/SCU roles) with pynetdicom's acceptor rules,
    against every storage SOP class and Verification in every transfer syntax it knows.

    Extended negotiation is answered as pynetdicom's AE answers it without handlers: user
    identity accepted without a server response (the allowlist, not this, decides who may
    store), SOP Class (Common) Extended Negotiation not accepted (no reply item), the
    asynchronous operations window left at one invoked, one performed (no reply item).
    """
    roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in request.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
    }
    results, role_replies = negotiate_as_acceptor(
        list(request.presentation_context_definition_list), _supported_contexts(), roles
    )
    accepted = [cx for cx in results if cx.result == 0x00]
    maximum_length = MaximumLengthNotification()
    maximum_length.maximum_length_received = maximum_pdu
    implementation_uid = ImplementationClassUIDNotification()
    implementation_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    implementation_version = ImplementationVersionNameNotification()
    implementation_version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    primitive = A_ASSOCIATE()
    primitive.application_context_name = _APPLICATION_CONTEXT
    primitive.calling_ae_title = request.calling_ae_title
    primitive.called_ae_title = request.called_ae_title
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = accepted + [
        cx for cx in results if cx.result != 0x00
    ]
    primitive.user_information = [
        maximum_length,
        implementation_uid,
        implementation_version,
        *role_replies,
    ]
    accept = A_ASSOCIATE_AC()
    accept.from_primitive(primitive)
    items = request.user_information
    return Negotiated(
        transfer_syntaxes=MappingProxyType(
            {int(cx.context_id or 0): str(cx.transfer_syntax[0]) for cx in accepted}
        ),
        abstract_syntaxes=MappingProxyType(
            {int(cx.context_id or 0): str(cx.abstract_syntax) for cx in accepted}
        ),
        peer_maximum_pdu=int(request.maximum_length_received or 0),
        accept_pdu=bytes(accept.encode()),
        user_identity_offered=any(isinstance(i, UserIdentityNegotiation) for i in items),
        extended_negotiation_refused=any(
            isinstance(
                i,
                SOPClassExtendedNegotiation
                | SOPClassCommonExtendedNegotiation
                | AsynchronousOperationsWindowNegotiation,
            )
            for i in items
        ),
    )


@cache
def storage_sop_classes() -> tuple[str, ...]:
    """Every storage SOP class pynetdicom knows, each once, in a stable order."""
    syntaxes = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    syntaxes += [cx.abstract_syntax for cx in StoragePresentationContexts]
    return tuple(str(uid) for uid in dict.fromkeys(syntaxes) if uid is not None)


def prepare_negotiation() -> None:
    """Build the contexts every association is negotiated against, once per process.

    Building pynetdicom's 185 presentation contexts validates every UID of every transfer
    syntax (~60 ms of CPU); the listener calls this before it accepts, so no association
    waits for it (several arriving at once each built it: the cache does not lock).
    """
    _supported_context_tuple()


def _supported_contexts() -> list[PresentationContext]:
    return list(_supported_context_tuple())


@cache
def _supported_context_tuple() -> Sequence[PresentationContext]:
    contexts: list[PresentationContext] = []
    for uid in (*storage_sop_classes(), str(Verification)):
        context = PresentationContext()
        context.abstract_syntax = uid
        context.transfer_syntax = list(ALL_TRANSFER_SYNTAXES)
        contexts.append(context)
    return tuple(contexts)
