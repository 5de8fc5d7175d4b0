"""Every reach into pynetdicom beyond its public API, in one place.

The agent tunes and guards pynetdicom's association machinery where it offers no option:
the DUL thread's idle sleep, the reactor thread's checkpoint, the transport's reads, the
server list of an AE, the process-wide `_config` flags, Nagle's algorithm on its sockets.
Each of these depends on how pynetdicom's internals look in the version below;
`tests/agent/test_pynetdicom_adapter.py` pins that version, so an upgrade fails there first
and someone re-reads these functions against the new source.

The lean intake engine (`agent.dicom.engine`) uses only pynetdicom's codec (PDU classes,
presentation negotiation, DIMSE message classes), which are public.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import cast

import structlog
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import ThreadedAssociationServer

__all__ = [
    "WRITTEN_FOR_PYNETDICOM",
    "contain_engine_failures",
    "disable_nagle",
    "guard_transport",
    "park_reactor",
    "quiet_identifier_logging",
    "register_server",
    "set_dul_loop_delay",
    "transport_socket",
    "unbind_logging_handlers",
]

WRITTEN_FOR_PYNETDICOM = "3.0.4"
"""The pynetdicom release whose internals the functions below were checked against."""

_log = structlog.get_logger("agent.dicom.scp")
_LOGGING_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT)
# One pass of pynetdicom's reactor loop sleeps about this long (its 'run loop delay').
_REACTOR_PASS_SECONDS = 0.002


def set_dul_loop_delay(assoc: Association, seconds: float) -> None:
    """The idle sleep of the association's DUL thread: pynetdicom has no public knob; the
    thread reads the attribute on every pass."""
    assoc.dul._run_loop_delay = seconds


def transport_socket(assoc: Association) -> socket.socket:
    """The association's TCP (or TLS) socket."""
    transport = assoc.dul.socket
    assert transport is not None
    assert transport.socket is not None
    return transport.socket


def disable_nagle(assoc: Association) -> None:
    """Send each PDU at once: pynetdicom writes a request's command and data set as separate
    PDUs, and with Nagle's algorithm on the second waits for the peer's delayed ACK (~40 ms
    per C-FIND, measured against Orthanc)."""
    transport = assoc.dul.socket
    raw = None if transport is None else transport.socket
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def unbind_logging_handlers(assoc: Association) -> None:
    """pynetdicom's standard logging handlers format every PDU and DIMSE message (and copy
    each data set) even when nothing is logged; we log per association instead."""
    for logging_event in _LOGGING_EVENTS:
        bound = cast(list[tuple[Callable[..., object], object]], assoc.get_handlers(logging_event))
        for handler, _args in list(bound):
            assoc.unbind(logging_event, handler)


def quiet_identifier_logging() -> None:
    """pynetdicom's C-FIND/C-MOVE/C-GET code formats every request and response identifier
    for its log whether or not a line is written (about a fifth of a query round's CPU,
    measured), and an identifier is patient data: the agent never wants them. Process-wide."""
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


def park_reactor(assoc: Association) -> None:
    """Park the association's reactor thread for good before a request goes out.

    pynetdicom 3.0's send_c_* pause the reactor (a thread that takes DIMSE messages off the
    queue) so it cannot take the response, but they only check a flag the reactor may have
    set just before passing its checkpoint; that pass then takes the response, which is lost
    ("Received unexpected C-FIND service message", pynetdicom issue #875). With a fast peer
    it happened to about one C-FIND in ten here. Closing the checkpoint and letting any pass
    already under way end (one sleep of the reactor loop) before checking the flag leaves
    nothing running that could take the response.
    """
    assoc._reactor_checkpoint.clear()
    time.sleep(_REACTOR_PASS_SECONDS)
    while not assoc._is_paused and assoc.is_established:
        time.sleep(0.0001)


def register_server(ae: AE, server: ThreadedAssociationServer) -> threading.Thread:
    """Serve `server` on a thread, as `AE.start_server(block=False)` does for the servers it
    makes itself (pynetdicom has no option for the socket or the TLS handshake, only for the
    server class of `make_server`); `AssociationServer.shutdown()` removes it again."""
    thread = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
    thread.start()
    ae._servers.append(server)
    return thread


def guard_transport(assoc: Association, timeout: float, maximum_pdu: int) -> None:
    """Bound what a peer can make the association's DUL thread do while reading a PDU.

    pynetdicom reads a PDU with blocking `recv` calls on a socket without a timeout, for as
    many bytes as the PDU's header claims: a peer that stops halfway keeps the thread (and
    the connection) forever, since the ARTIM and idle timers are checked between PDUs and an
    abort waits for that thread; one that claims 4 GiB is buffered as it sends. So the socket
    gets `timeout`, and a PDU longer than `maximum_pdu` ends the connection before its body
    is read.
    """
    transport = assoc.dul.socket
    assert transport is not None
    raw = transport_socket(assoc)
    raw.settimeout(timeout)
    read = transport.recv
    host = str(assoc.requestor.address)

    def recv(count: int) -> bytearray:
        if count <= maximum_pdu:
            return read(count)
        _log.warning(
            "dicom connection closed",
            peer_host=host,
            reason=f"a PDU of {count} bytes, over the {maximum_pdu} allowed",
        )
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)
        return bytearray()  # pynetdicom: "PDU shorter than expected", transport closed

    # pynetdicom has no hook for the transport's reads; the DUL calls this attribute.
    transport.recv = recv  # type: ignore[method-assign,assignment]


def contain_engine_failures(assoc: Association, finish: Callable[[Association], None]) -> None:
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
