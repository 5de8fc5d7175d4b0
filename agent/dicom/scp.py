"""The storage SCP: accepts associations, makes each C-STORE durable, answers with a status.

pynetdicom runs every association on its own thread; the C-STORE handler runs there too. It
checks the encoded data set (without decoding it), writes the Part-10 bytes to the spool and
returns a status: nothing else happens in it (no routing, no upload). Success goes out only
after the file and its state row are durable. The one hand-over to the rest of the agent is
`on_stored(series_instance_uid)`, which the runtime binds to `loop.call_soon_threadsafe`.

Before an association is accepted (`EVT_REQUESTED`) the listener checks, in this order, and
answers A-ASSOCIATE-RJ rejected-permanent from the service user when one fails: the source
address is in `dicom.peers` (else reason 0x01 no-reason-given: an unknown machine learns
nothing about what would have been accepted), the calling AE title is listed with that address
(0x03 calling-AE-title-not-recognised), the called AE title is ours (0x07
called-AE-title-not-recognised; checked whenever `dicom.peers` is set). Then it takes one of
`dicom.max_associations` slots shared by every intake process (`AssociationLimit`); none left:
rejected-transient from the service provider (presentation), 0x02 local-limit-exceeded. Every
refusal, and every failed TLS handshake, is counted by reason and source address
(`DicomListener.rejections`).

With TLS the handshake runs on the connection's own thread, bounded by the ARTIM timeout,
never on the accept thread (pynetdicom's default), where one silent client would stall every
other. Its context comes from `TlsContexts`, so a renewed certificate serves the next
association.

This package is the only place pynetdicom is imported. Log lines carry AE titles, hosts,
statuses and series keys, never DICOM values.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import structlog
from pydicom.dataset import Dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    StoragePresentationContexts,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from agent.dicom.association_limit import AssociationLimit
from agent.dicom.intake import StoreRefused, status_dataset, store_received
from agent.dicom.status import Status
from agent.dicom.tls import TlsContexts
from agent.rejections import RejectionCounter, RejectionReason
from agent.spool import Spool
from agent.state import AddOutcome
from common.logging import series_key

__all__ = ["DEFAULT_DUL_LOOP_DELAY", "DicomListener", "ScpTimeouts"]

_log = structlog.get_logger(__name__)

# pynetdicom's DUL thread sleeps this long whenever a pass found nothing to do (its own default
# is 1 ms); an instance meets about two such idle gaps. Measured on the 2-core reference VM:
# an idle association costs ~10% of a core at 1 ms, ~17% at 0.2 ms, ~21% at 0.1 ms and ~38%
# at 0, so 0.2 ms buys most of the latency for little CPU. See docs/intake.md.
DEFAULT_DUL_LOOP_DELAY = 0.0002
# Larger receive PDUs mean fewer PDU decodes per instance; peers send up to what we announce.
_MAXIMUM_PDU_SIZE = 1 << 20
# The longest PDU read from a peer: the P-DATA size we announce, with room for an association
# request of many presentation contexts. pynetdicom reads whatever length a PDU header claims
# (up to 4 GiB) into memory; a longer one closes the connection instead.
_MAXIMUM_RECEIVED_PDU = _MAXIMUM_PDU_SIZE + (64 << 10)
_LOGGING_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT)
_REJECTED_PERMANENT, _REJECTED_TRANSIENT = 0x01, 0x02
_SERVICE_USER, _SERVICE_PROVIDER_PRESENTATION = 0x01, 0x03
_NO_REASON_GIVEN, _CALLING_AE_NOT_RECOGNISED, _CALLED_AE_NOT_RECOGNISED = 0x01, 0x03, 0x07
_LOCAL_LIMIT_EXCEEDED = 0x02
# (result, source, diagnostic) of each A-ASSOCIATE-RJ the listener sends.
_REJECT = {
    RejectionReason.unlisted_address: (_REJECTED_PERMANENT, _SERVICE_USER, _NO_REASON_GIVEN),
    RejectionReason.calling_ae_not_recognised: (
        _REJECTED_PERMANENT,
        _SERVICE_USER,
        _CALLING_AE_NOT_RECOGNISED,
    ),
    RejectionReason.called_ae_not_recognised: (
        _REJECTED_PERMANENT,
        _SERVICE_USER,
        _CALLED_AE_NOT_RECOGNISED,
    ),
    RejectionReason.association_limit: (
        _REJECTED_TRANSIENT,
        _SERVICE_PROVIDER_PRESENTATION,
        _LOCAL_LIMIT_EXCEEDED,
    ),
}
# A sanity bound for pynetdicom's own per-process count, which includes connections that have
# not asked for an association yet; the limit that matters is `AssociationLimit`'s.
_PYNETDICOM_MAXIMUM_ASSOCIATIONS = 4096
_ABORT_JOIN_SECONDS = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class ScpTimeouts:
    """Seconds the SCP waits for a peer (`dicom.timeouts`)."""

    artim: float = 30.0  # connection → A-ASSOCIATE-RQ, release answers, the TLS handshake
    dimse: float = 60.0  # the next DIMSE message
    network: float = 120.0  # no traffic at all on an association


@dataclass
class _AssociationTally:
    """What one association did, for the line logged when it closes."""

    peer_host: str
    opened_at: float = field(default_factory=time.monotonic)
    peer_ae: str | None = None
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    slot: int | None = None


class DicomListener:
    """A C-ECHO/C-STORE SCP for every storage SOP class, writing into a `Spool`."""

    def __init__(
        self,
        *,
        ae_title: str,
        host: str,
        port: int,
        peers: Sequence[tuple[str, str]],
        spool: Spool,
        on_stored: Callable[[str], None] | None = None,
        dul_loop_delay: float = DEFAULT_DUL_LOOP_DELAY,
        maximum_associations: int = 16,
        require_called_aet: bool = False,
        share_port: bool = False,
        tls: TlsContexts | None = None,
        association_limit: AssociationLimit | None = None,
        timeouts: ScpTimeouts = ScpTimeouts(),
    ) -> None:
        """Configure the listener; nothing is bound until `start`.

        `peers` is the allowlist of (AE title, host); empty accepts any peer. Hosts may be
        names, resolved at `start`. `dul_loop_delay` is the idle sleep of each association's
        DUL thread (latency against idle CPU, see `DEFAULT_DUL_LOOP_DELAY`).
        `maximum_associations` beyond which new ones are rejected (transient, local limit),
        counted in this process unless `association_limit` (shared by every intake process)
        is given; the listener closes that one when it stops.
        `require_called_aet` rejects associations addressed to another AE title; without an
        allowlist it is off by default, as in dcmtk's storescp and Orthanc (a harmless typo on
        a scanner should not become a support call); with `peers` it is always on, because
        an allowlisted site asked for strict checks. `share_port` binds with SO_REUSEPORT, so
        the agent's intake processes listen on one port and the kernel spreads associations
        over them (`agent.intake_workers`); only processes of the same user can join. `tls`
        makes the SCP speak TLS only.
        """
        if dul_loop_delay < 0:
            raise ValueError(f"dul_loop_delay must be >= 0 seconds, got {dul_loop_delay}")
        self._ae_title = ae_title
        self._host = host
        self._requested_port = port
        self._peers = tuple(peers)
        self._spool = spool
        self._on_stored = on_stored
        self._dul_loop_delay = dul_loop_delay
        self._limit = association_limit or AssociationLimit(maximum_associations)
        self._require_called_aet = require_called_aet or bool(self._peers)
        self._share_port = share_port
        self._tls = tls
        self._timeouts = timeouts
        self.rejections = RejectionCounter()
        """Refused associations and TLS handshakes, by reason and source address."""
        self._allowed: frozenset[tuple[str, IPAddress]] = frozenset()
        self._allowed_hosts: frozenset[IPAddress] = frozenset()
        self._server: ThreadedAssociationServer | None = None
        self._started = False
        self._lifecycle = threading.Lock()
        self._tallies: dict[Association, _AssociationTally] = {}
        self._tallies_lock = threading.Lock()
        # pynetdicom logs whole data sets at DEBUG; stay quiet unless someone chose a level.
        library_logger = logging.getLogger("pynetdicom")
        if library_logger.level == logging.NOTSET:
            library_logger.setLevel(logging.WARNING)

    @property
    def port(self) -> int:
        """The bound TCP port; only valid after `start`."""
        server = self._server
        if server is None:
            raise RuntimeError("the DICOM listener is not running; call start() first")
        return int(server.server_address[1])

    def start(self) -> int:
        """Bind and start accepting associations; return the bound port (`port=0` allowed).

        Raises `OSError` when the port cannot be bound and `ValueError` when a peer host
        does not resolve.
        """
        with self._lifecycle:
            if self._started:
                raise RuntimeError("a DicomListener starts once; create a new one to restart")
            self._allowed = _resolve_peers(self._peers)
            self._allowed_hosts = frozenset(address for _, address in self._allowed)
            ae = AE(ae_title=self._ae_title)
            ae.maximum_associations = _PYNETDICOM_MAXIMUM_ASSOCIATIONS
            ae.maximum_pdu_size = _MAXIMUM_PDU_SIZE
            ae.acse_timeout = self._timeouts.artim
            ae.dimse_timeout = self._timeouts.dimse
            ae.network_timeout = self._timeouts.network
            for syntax in _storage_sop_classes():
                ae.add_supported_context(syntax, ALL_TRANSFER_SYNTAXES)
            ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
            handlers: list[EventHandlerType] = [
                (evt.EVT_CONN_OPEN, self._handle_connection_open),
                (evt.EVT_REQUESTED, self._handle_association_request),
                (evt.EVT_C_ECHO, self._handle_echo),
                (evt.EVT_C_STORE, self._handle_store),
                (evt.EVT_CONN_CLOSE, self._handle_connection_close),
            ]
            address = (self._host, self._requested_port)
            self._server = _start_server(
                ae,
                address,
                handlers,
                share_port=self._share_port,
                tls=self._tls,
                handshake_timeout=self._timeouts.artim,
                on_handshake_failed=self._handshake_failed,
            )
            self._started = True
            port = self.port
        _log.info("dicom listener started", ae_title=self._ae_title, port=port)
        return port

    def stop(self, timeout: float) -> None:
        """Stop accepting, let established associations finish for up to `timeout` seconds,
        then abort the rest (their unacknowledged instances will be resent). Idempotent.
        """
        with self._lifecycle:
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + timeout
        while (running := _established(server)) and time.monotonic() < deadline:
            running[0].join(timeout=max(0.0, deadline - time.monotonic()))
        # What is left: associations past the timeout, and connections that never asked for
        # one (pynetdicom would keep those for its ACSE timeout, 30 s).
        leftover = server.active_associations
        for assoc in leftover:
            assoc.abort()
        join_deadline = time.monotonic() + _ABORT_JOIN_SECONDS
        for assoc in leftover:
            if assoc.is_established:
                assoc.join(timeout=max(0.0, join_deadline - time.monotonic()))
        self._limit.close()
        _log.info("dicom listener stopped", ae_title=self._ae_title, count=len(leftover))

    def _handle_connection_open(self, event: Event) -> None:
        try:
            assoc = event.assoc
            # pynetdicom's standard logging handlers format every PDU and DIMSE message (and
            # copy each data set) even when nothing is logged; we log per association instead.
            for logging_event in _LOGGING_EVENTS:
                bound = cast(
                    list[tuple[Callable[..., object], object]], assoc.get_handlers(logging_event)
                )
                for handler, _args in list(bound):
                    assoc.unbind(logging_event, handler)
            with self._tallies_lock:
                self._tallies[assoc] = _AssociationTally(peer_host=str(assoc.requestor.address))
            _guard_transport(assoc, self._timeouts.artim)
            _contain_engine_failures(assoc, self._finish_connection)
        except Exception:
            _log.exception("dicom connection set-up failed")
            event.assoc.abort()

    def _handle_association_request(self, event: Event) -> None:
        try:
            assoc = event.assoc
            calling = _calling_ae_title(assoc) or ""
            host = str(assoc.requestor.address)
            tally = self._tally(assoc)
            if tally is not None:
                tally.peer_ae = calling
            refusal = self._refusal(assoc, calling, host)
            if refusal is None:
                slot = self._limit.acquire()
                if slot is None:
                    refusal = RejectionReason.association_limit
                elif tally is None:
                    self._limit.release(slot)
                else:
                    tally.slot = slot
            if refusal is None:
                # pynetdicom offers no public knob for this delay; the DUL thread reads the
                # attribute on every pass. Set only now, so connections that never ask for an
                # association (TCP probes) idle at pynetdicom's cheaper default.
                assoc.dul._run_loop_delay = self._dul_loop_delay
                _transport_socket(assoc).settimeout(self._timeouts.network)
                return
            self.rejections.record(refusal, _source(host))
            _log.warning("association rejected", peer_ae=calling, peer_host=host, reason=refusal)
            assoc.acse.send_reject(*_REJECT[refusal])
            assoc.kill()
        except Exception:
            _log.exception("association request check failed")
            event.assoc.abort()

    def _refusal(self, assoc: Association, calling: str, host: str) -> RejectionReason | None:
        """Why the allowlist or the called AE title refuses this request; None if neither."""
        if self._allowed:
            address = _peer_address(host, calling)
            if address is None or address[1] not in self._allowed_hosts:
                return RejectionReason.unlisted_address
            if address not in self._allowed:
                return RejectionReason.calling_ae_not_recognised
        if self._require_called_aet and _called_ae_title(assoc) != self._ae_title.strip():
            return RejectionReason.called_ae_not_recognised
        return None

    def _handshake_failed(self, host: str) -> None:
        self.rejections.record(RejectionReason.tls_handshake_failed, _source(host))

    def _handle_echo(self, event: Event) -> int:
        return int(Status.SUCCESS)

    def _handle_store(self, event: Event) -> Dataset:
        received_at = time.time()
        tally = self._tally(event.assoc)
        try:
            stored = store_received(
                event,
                self._spool,
                source_ae_title=_calling_ae_title(event.assoc),
                received_at=received_at,
            )
        except StoreRefused as refusal:
            return self._refuse(event, tally, refusal)
        except Exception as exc:
            _log.exception(
                "c-store failed",
                status=f"0x{Status.PROCESSING_FAILURE:04X}",
                error=type(exc).__name__,
                **_peer_fields(tally),
            )
            return self._refuse(
                event,
                tally,
                StoreRefused(Status.PROCESSING_FAILURE, "storage failed on the agent; see its log"),
            )
        duplicate = stored.outcome is AddOutcome.duplicate
        if tally is not None:
            tally.bytes += stored.size
            if duplicate:
                tally.duplicates += 1
            else:
                tally.stored += 1
        series_uid = stored.series_instance_uid
        if self._on_stored is not None and not duplicate and series_uid:
            try:
                self._on_stored(series_uid)
            except Exception:
                # The instance is durable and the reaper polls the state anyway: a lost wake-up
                # only delays it, so the peer still gets Success.
                _log.exception("on_stored callback failed", series_key=series_key(series_uid))
        return status_dataset(Status.SUCCESS)

    def _refuse(
        self, event: Event, tally: _AssociationTally | None, refusal: StoreRefused
    ) -> Dataset:
        if tally is not None:
            tally.failed += 1
        if refusal.status is not Status.PROCESSING_FAILURE:  # that one was logged with its trace
            _log.warning(
                "c-store refused",
                status=f"0x{refusal.status:04X}",
                sop_class=_sop_class_name(event),
                reason=refusal.detail,
                **_peer_fields(tally),
            )
        return status_dataset(refusal.status, str(refusal))

    def _handle_connection_close(self, event: Event) -> None:
        self._finish_connection(event.assoc)

    def _finish_connection(self, assoc: Association) -> None:
        """Release the connection's slot and log its tally; once, whoever calls first."""
        try:
            with self._tallies_lock:
                tally = self._tallies.pop(assoc, None)
            if tally is None:
                return
            if tally.slot is not None:
                self._limit.release(tally.slot)
            _log.info(
                "association closed",
                count=tally.stored,
                instance_count=tally.stored + tally.duplicates + tally.failed,
                bytes=tally.bytes,
                duration_ms=round((time.monotonic() - tally.opened_at) * 1000),
                **_peer_fields(tally),
            )
        except Exception:
            _log.exception("dicom connection tear-down failed")

    def _tally(self, assoc: Association) -> _AssociationTally | None:
        with self._tallies_lock:
            return self._tallies.get(assoc)


class _AgentServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, optionally bound with SO_REUSEPORT, doing TLS handshakes
    on each connection's own thread with a deadline (pynetdicom does them on the accept thread,
    without one)."""

    def __init__(
        self,
        *args: object,
        share_port: bool,
        tls: TlsContexts | None,
        handshake_timeout: float,
        on_handshake_failed: Callable[[str], None],
        **kwargs: object,
    ) -> None:
        self._share_port = share_port
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._on_handshake_failed = on_handshake_failed
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def server_bind(self) -> None:
        assert self.socket is not None
        if self._share_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        if self._tls is not None and isinstance(request, socket.socket):
            secured = self._handshake(request, client_address)
            if secured is None:
                return
            request = secured
        super().process_request_thread(request, client_address)

    def _handshake(
        self, plain: socket.socket, client_address: tuple[str, int] | str
    ) -> ssl.SSLSocket | None:
        assert self._tls is not None
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        try:
            plain.settimeout(self._handshake_timeout)
            secured = self._tls.server().wrap_socket(plain, server_side=True)
            secured.settimeout(None)
        except (OSError, ValueError) as exc:
            self._on_handshake_failed(host)
            _log.warning("tls handshake failed", peer_host=host, reason=_handshake_problem(exc))
            with contextlib.suppress(OSError):
                plain.close()
            return None
        return secured


def _handshake_problem(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within the ARTIM timeout"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return type(exc).__name__


def _start_server(
    ae: AE,
    address: tuple[str, int],
    handlers: list[EventHandlerType],
    *,
    share_port: bool,
    tls: TlsContexts | None,
    handshake_timeout: float,
    on_handshake_failed: Callable[[str], None],
) -> ThreadedAssociationServer:
    """What `AE.start_server(block=False)` does, with `_AgentServer`: pynetdicom has no
    option for the socket or the handshake, only for the server class of `make_server`."""
    server = cast(
        ThreadedAssociationServer,
        ae.make_server(
            address,
            evt_handlers=handlers,
            server_class=_AgentServer,
            share_port=share_port,
            tls=tls,
            handshake_timeout=handshake_timeout,
            on_handshake_failed=on_handshake_failed,
        ),
    )
    thread = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
    thread.start()
    # AssociationServer.shutdown() removes the server from this list, as start_server's are.
    ae._servers.append(server)
    return server


def _transport_socket(assoc: Association) -> socket.socket:
    transport = assoc.dul.socket
    assert transport is not None
    assert transport.socket is not None
    return transport.socket


def _guard_transport(assoc: Association, timeout: float) -> None:
    """Bound what a peer can make the association's DUL thread do while reading a PDU.

    pynetdicom reads a PDU with blocking `recv` calls on a socket without a timeout, for as
    many bytes as the PDU's header claims: a peer that stops halfway keeps the thread (and
    the connection) forever, since the ARTIM and idle timers are checked between PDUs and an
    abort waits for that thread; one that claims 4 GiB is buffered as it sends. So the socket
    gets a timeout (ARTIM until the association is accepted, then the network timeout), and a
    PDU longer than `_MAXIMUM_RECEIVED_PDU` ends the connection before its body is read.
    """
    transport = assoc.dul.socket
    assert transport is not None
    raw = _transport_socket(assoc)
    raw.settimeout(timeout)
    read = transport.recv
    host = str(assoc.requestor.address)

    def recv(count: int) -> bytearray:
        if count <= _MAXIMUM_RECEIVED_PDU:
            return read(count)
        _log.warning(
            "dicom connection closed",
            peer_host=host,
            reason=f"a PDU of {count} bytes, over the {_MAXIMUM_RECEIVED_PDU} allowed",
        )
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)
        return bytearray()  # pynetdicom: "PDU shorter than expected", transport closed

    # pynetdicom has no hook for the transport's reads; the DUL calls this attribute.
    transport.recv = recv  # type: ignore[method-assign,assignment]


def _contain_engine_failures(assoc: Association, finish: Callable[[Association], None]) -> None:
    """Abort and close the connection when pynetdicom's DUL thread meets an exception.

    The DUL runs state-machine actions (decoding a DIMSE message among them) outside its own
    error handling: a command set without a Command Field ends the thread with an
    AttributeError; and an error while reading a PDU sends A-ABORT but returns without closing
    the socket. Either way no EVT_CONN_CLOSE follows, so the association's slot of
    `dicom.max_associations`, its socket and its buffers were held for good: sixteen such
    connections locked every scanner out (found by tests/agent/test_scp_fuzz.py). Here the
    peer gets A-ABORT, the socket is closed and `finish` releases the slot.
    """
    dul = assoc.dul
    machine = dul.state_machine
    act = machine.do_action
    receive = dul._is_transport_event
    host = str(assoc.requestor.address)

    def fail(exc: Exception) -> None:
        _log.warning(
            "association aborted",
            peer_host=host,
            reason=f"the association failed on malformed input ({type(exc).__name__})",
        )
        abort = A_ABORT_RQ()
        abort.source = 0x02  # service provider
        abort.reason_diagnostic = 0x00
        transport = dul.socket
        with contextlib.suppress(Exception):
            if transport is not None:
                transport.send(abort.encode())
        assoc.is_aborted = True
        assoc.is_established = False
        assoc._kill = True
        dul._kill_thread = True
        with contextlib.suppress(Exception):
            if transport is not None:
                transport.close()
        finish(assoc)

    def do_action(fsm_event: str) -> None:
        try:
            act(fsm_event)
        except Exception as exc:
            fail(exc)

    def is_transport_event() -> bool:
        try:
            return receive()
        except Exception as exc:
            fail(exc)
            return False

    # pynetdicom has no hook for either; the DUL looks both attributes up on every pass.
    machine.do_action = do_action  # type: ignore[method-assign,assignment]
    dul._is_transport_event = is_transport_event  # type: ignore[method-assign]


def _established(server: ThreadedAssociationServer) -> list[Association]:
    return [assoc for assoc in server.active_associations if assoc.is_established]


def _storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows, each once, in a stable order."""
    syntaxes = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    syntaxes += [cx.abstract_syntax for cx in StoragePresentationContexts]
    return [str(uid) for uid in dict.fromkeys(syntaxes) if uid is not None]


def _resolve_peers(peers: Sequence[tuple[str, str]]) -> frozenset[tuple[str, IPAddress]]:
    allowed: set[tuple[str, IPAddress]] = set()
    for ae_title, host in peers:
        try:
            addresses = {_normalise(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"dicom.peers: host {host!r} (AE title {ae_title!r}) does not resolve ({exc}); "
                "use the peer's static IP address or fix its DNS name"
            ) from exc
        allowed.update((ae_title.strip(), address) for address in addresses)
    return frozenset(allowed)


def _normalise(address: str | int) -> IPAddress:
    parsed = ipaddress.ip_address(str(address).split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def _peer_address(host: str, ae_title: str) -> tuple[str, IPAddress] | None:
    try:
        return ae_title, _normalise(host)
    except ValueError:
        return None


def _source(host: str) -> str:
    try:
        return str(_normalise(host))
    except ValueError:
        return "unknown"


def _called_ae_title(assoc: Association) -> str:
    request = assoc.requestor.primitive
    return "" if request is None else str(request.called_ae_title).strip()


def _calling_ae_title(assoc: Association) -> str | None:
    request = assoc.requestor.primitive
    return None if request is None else str(request.calling_ae_title).strip() or None


def _sop_class_name(event: Event) -> str:
    sop_class = cast(C_STORE, event.request).AffectedSOPClassUID
    return "unknown" if sop_class is None else str(sop_class.name)


def _peer_fields(tally: _AssociationTally | None) -> dict[str, str | None]:
    if tally is None:
        return {}
    return {"peer_ae": tally.peer_ae, "peer_host": tally.peer_host}
