"""The lean intake listener: accepts TCP (or TLS) connections and runs each association as one
blocking loop on its own thread (`agent.dicom.engine.association`).

pynetdicom runs two threads per association (its DUL and its reactor) that hand every message
over through polled queues with fixed sleeps; this engine keeps pynetdicom's codec for the
association set-up and everything rare, and drops the threads and queues (docs/intake.md).
It honours what the pynetdicom listener (`agent.dicom.scp.DicomListener`) does, with the same
constructor: the allowlist and called AE title (`PeerAccess`), the association cap shared by
every intake process (`AssociationLimit`), counted rejections, ARTIM/DIMSE/network timeouts,
the PDU size guard, TLS from `TlsContexts` (a renewed certificate serves the next
association), and SO_REUSEPORT for several intake processes on one port.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

import structlog

from agent.dicom.access import PeerAccess
from agent.dicom.association_limit import AssociationLimit
from agent.dicom.engine.association import AcceptorServices, Association
from agent.dicom.engine.incoming import SPILL_BYTES
from agent.dicom.engine.pdu import prepare_negotiation
from agent.dicom.store_handler import StoreHandler
from agent.dicom.timeouts import ScpTimeouts
from agent.dicom.tls import TlsContexts
from agent.rejections import RejectionCounter
from agent.spool import Spool

__all__ = ["MAXIMUM_PDU_SIZE", "MAXIMUM_RECEIVED_PDU", "LeanListener"]

_log = structlog.get_logger("agent.dicom.scp")

MAXIMUM_PDU_SIZE = 1 << 20
"""The P-DATA size we announce: larger PDUs mean fewer reads per instance."""
MAXIMUM_RECEIVED_PDU = MAXIMUM_PDU_SIZE + (64 << 10)
"""The longest PDU read from a peer, with room for an association request of many contexts."""
# Connections at once (associations or not yet): beyond, new ones are closed at once.
_MAXIMUM_CONNECTIONS = 4096
_ABORT_JOIN_SECONDS = 5.0
_BACKLOG = 128


class LeanListener:
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
        maximum_associations: int = 16,
        require_called_aet: bool = False,
        share_port: bool = False,
        tls: TlsContexts | None = None,
        association_limit: AssociationLimit | None = None,
        timeouts: ScpTimeouts | None = None,
        spill_bytes: int = SPILL_BYTES,
    ) -> None:
        """Configure the listener; nothing is bound until `start`. The options mean what they
        mean for `agent.dicom.scp.DicomListener`; an instance larger than `spill_bytes` is
        written into its spool slot as it arrives (agent/dicom/engine/incoming.py)."""
        self._ae_title = ae_title
        self._host = host
        self._requested_port = port
        self._access = PeerAccess(ae_title, peers, require_called_aet=require_called_aet)
        self._limit = association_limit or AssociationLimit(maximum_associations)
        self._share_port = share_port
        self.rejections = RejectionCounter()
        """Refused associations and TLS handshakes, by reason and source address."""
        self._services = AcceptorServices(
            access=self._access,
            limit=self._limit,
            rejections=self.rejections,
            handler=StoreHandler(on_stored),
            spool=spool,
            timeouts=timeouts or ScpTimeouts(),
            tls=tls,
            maximum_pdu=MAXIMUM_PDU_SIZE,
            maximum_received_pdu=MAXIMUM_RECEIVED_PDU,
            spill_bytes=spill_bytes,
        )
        self._socket: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._started = False
        self._stopping = False
        self._lifecycle = threading.Lock()
        self._live: dict[Association, threading.Thread] = {}
        self._live_lock = threading.Lock()
        library_logger = logging.getLogger("pynetdicom")
        if library_logger.level == logging.NOTSET:
            library_logger.setLevel(logging.WARNING)

    @property
    def port(self) -> int:
        """The bound TCP port; only valid after `start`."""
        listening = self._socket
        if listening is None:
            raise RuntimeError("the DICOM listener is not running; call start() first")
        return int(listening.getsockname()[1])

    def start(self) -> int:
        """Bind and start accepting associations; return the bound port (`port=0` allowed).

        Raises `OSError` when the port cannot be bound and `ValueError` when a peer host
        does not resolve.
        """
        with self._lifecycle:
            if self._started:
                raise RuntimeError("a listener starts once; create a new one to restart")
            self._access.resolve()
            prepare_negotiation()
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            listening = socket.socket(family, socket.SOCK_STREAM)
            try:
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self._share_port:
                    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                listening.bind((self._host, self._requested_port))
                listening.listen(_BACKLOG)
            except BaseException:
                listening.close()
                raise
            self._socket = listening
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(listening,), name="dicom-accept", daemon=True
            )
            self._accept_thread.start()
            self._started = True
            port = self.port
        _log.info("dicom listener started", ae_title=self._ae_title, port=port)
        return port

    def stop(self, timeout: float) -> None:
        """Stop accepting, let established associations finish for up to `timeout` seconds,
        then abort the rest (their unacknowledged instances will be resent). Idempotent."""
        with self._lifecycle:
            listening, self._socket = self._socket, None
            self._stopping = True
        if listening is None:
            return
        with contextlib.suppress(OSError):
            listening.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        listening.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=_ABORT_JOIN_SECONDS)
        # Connections that never asked for an association have nothing to finish.
        for assoc, _ in self._snapshot():
            if not assoc.established:
                assoc.abort()
        deadline = time.monotonic() + timeout
        while (running := [t for a, t in self._snapshot() if a.established]) and (
            time.monotonic() < deadline
        ):
            running[0].join(timeout=max(0.0, deadline - time.monotonic()))
        leftover = self._snapshot()
        for assoc, _ in leftover:
            assoc.abort()
        join_deadline = time.monotonic() + _ABORT_JOIN_SECONDS
        for _, thread in leftover:
            thread.join(timeout=max(0.0, join_deadline - time.monotonic()))
        self._limit.close()
        _log.info("dicom listener stopped", ae_title=self._ae_title, count=len(leftover))

    def _snapshot(self) -> list[tuple[Association, threading.Thread]]:
        with self._live_lock:
            return list(self._live.items())

    def _accept_loop(self, listening: socket.socket) -> None:
        while True:
            try:
                connection, address = listening.accept()
            except OSError:
                if self._stopping:
                    return
                _log.exception("dicom accept failed")
                time.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            try:
                self._begin(connection, str(address[0]))
            except Exception:
                _log.exception("dicom connection set-up failed")
                with contextlib.suppress(OSError):
                    connection.close()

    def _begin(self, connection: socket.socket, host: str) -> None:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._live_lock:
            if len(self._live) >= _MAXIMUM_CONNECTIONS or self._stopping:
                connection.close()
                return
            assoc = Association(connection, host, self._services)
            thread = threading.Thread(
                target=self._run, args=(assoc,), name="dicom-association", daemon=True
            )
            self._live[assoc] = thread
        thread.start()

    def _run(self, assoc: Association) -> None:
        try:
            assoc.serve()
        finally:
            with self._live_lock:
                self._live.pop(assoc, None)
