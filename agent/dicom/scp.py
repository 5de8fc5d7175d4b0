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
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
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
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from agent.dicom.access import REJECT, PeerAccess, source_of
from agent.dicom.association_limit import AssociationLimit
from agent.dicom.intake import status_dataset, store_received
from agent.dicom.pynetdicom_adapter import (
    contain_engine_failures,
    guard_transport,
    register_server,
    set_dul_loop_delay,
    transport_socket,
    unbind_logging_handlers,
)
from agent.dicom.status import Status
from agent.dicom.store_handler import AssociationTally, StoreHandler
from agent.dicom.timeouts import ScpTimeouts
from agent.dicom.tls import TlsContexts, handshake_problem
from agent.rejections import RejectionCounter, RejectionReason
from agent.spool import Spool

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
# A sanity bound for pynetdicom's own per-process count, which includes connections that have
# not asked for an association yet; the limit that matters is `AssociationLimit`'s.
_PYNETDICOM_MAXIMUM_ASSOCIATIONS = 4096
_ABORT_JOIN_SECONDS = 5.0


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
        timeouts: ScpTimeouts | None = None,
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
        self._access = PeerAccess(ae_title, peers, require_called_aet=require_called_aet)
        self._spool = spool
        self._handler = StoreHandler(on_stored)
        self._dul_loop_delay = dul_loop_delay
        self._limit = association_limit or AssociationLimit(maximum_associations)
        self._share_port = share_port
        self._tls = tls
        self._timeouts = timeouts or ScpTimeouts()
        self.rejections = RejectionCounter()
        """Refused associations and TLS handshakes, by reason and source address."""
        self._server: ThreadedAssociationServer | None = None
        self._started = False
        self._lifecycle = threading.Lock()
        self._tallies: dict[Association, AssociationTally] = {}
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
            self._access.resolve()
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
            unbind_logging_handlers(assoc)
            with self._tallies_lock:
                self._tallies[assoc] = AssociationTally(peer_host=str(assoc.requestor.address))
            guard_transport(assoc, self._timeouts.artim, _MAXIMUM_RECEIVED_PDU)
            contain_engine_failures(assoc, self._finish_connection)
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
            refusal = self._access.refusal(
                calling=calling, called=_called_ae_title(assoc), host=host
            )
            if refusal is None:
                slot = self._limit.acquire()
                if slot is None:
                    refusal = RejectionReason.association_limit
                elif tally is None:
                    self._limit.release(slot)
                else:
                    tally.slot = slot
            if refusal is None:
                # Set only now, so connections that never ask for an association (TCP
                # probes) idle at pynetdicom's cheaper default.
                set_dul_loop_delay(assoc, self._dul_loop_delay)
                transport_socket(assoc).settimeout(self._timeouts.network)
                return
            self.rejections.record(refusal, source_of(host))
            _log.warning("association rejected", peer_ae=calling, peer_host=host, reason=refusal)
            assoc.acse.send_reject(*REJECT[refusal])
            assoc.kill()
        except Exception:
            _log.exception("association request check failed")
            event.assoc.abort()

    def _handshake_failed(self, host: str) -> None:
        self.rejections.record(RejectionReason.tls_handshake_failed, source_of(host))

    def _handle_echo(self, event: Event) -> int:
        return int(Status.SUCCESS)

    def _handle_store(self, event: Event) -> Dataset:
        received_at = time.time()
        request = cast(C_STORE, event.request)
        status, comment = self._handler.handle(
            self._tally(event.assoc),
            lambda: store_received(
                event,
                self._spool,
                source_ae_title=_calling_ae_title(event.assoc),
                received_at=received_at,
            ),
            str(request.AffectedSOPClassUID or ""),
        )
        return status_dataset(status, comment)

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
            self._handler.closed(tally)
        except Exception:
            _log.exception("dicom connection tear-down failed")

    def _tally(self, assoc: Association) -> AssociationTally | None:
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
            _log.warning("tls handshake failed", peer_host=host, reason=handshake_problem(exc))
            with contextlib.suppress(OSError):
                plain.close()
            return None
        return secured


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
    register_server(ae, server)
    return server


def _established(server: ThreadedAssociationServer) -> list[Association]:
    return [assoc for assoc in server.active_associations if assoc.is_established]


def _storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows, each once, in a stable order."""
    syntaxes = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    syntaxes += [cx.abstract_syntax for cx in StoragePresentationContexts]
    return [str(uid) for uid in dict.fromkeys(syntaxes) if uid is not None]


def _called_ae_title(assoc: Association) -> str:
    request = assoc.requestor.primitive
    return "" if request is None else str(request.called_ae_title).strip()


def _calling_ae_title(assoc: Association) -> str | None:
    request = assoc.requestor.primitive
    return None if request is None else str(request.calling_ae_title).strip() or None
