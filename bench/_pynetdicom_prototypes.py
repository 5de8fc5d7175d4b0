"""Prototypes of pynetdicom changes, measured by the benchmark before anyone builds them for real.

Only bench/_floor_scp.py and bench/_agent_intake.py (receiver processes) import this.
`cap_association_reactor_sleep` patches a pynetdicom module for the whole process, which
production code must never do; docs/benchmarks.md says what the proper change would be.
"""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pynetdicom.association
from pynetdicom.transport import ThreadedAssociationServer


class ReusePortServer(ThreadedAssociationServer):
    """An association server that shares its port with sibling processes (SO_REUSEPORT).

    The kernel spreads new connections over every process bound this way, so associations run
    on more than one interpreter (and GIL). Pass it as ``AE.make_server(server_class=...)``.
    """

    def server_bind(self) -> None:
        """Set SO_REUSEPORT, then bind as pynetdicom does."""
        assert self.socket is not None  # TCPServer creates it before binding
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def cap_association_reactor_sleep(seconds: float) -> None:
    """Make pynetdicom's association reactor sleep at most seconds per pass instead of 1 ms.

    ``Association._run_reactor`` sleeps a fixed 1 ms before every check for a new DIMSE
    message, and there is no setting for it. association.py uses its ``time`` module only for
    sleeping, so handing it a ``time`` whose sleep is capped changes exactly those waits.
    """
    real_sleep = time.sleep
    pynetdicom.association.time = SimpleNamespace(  # type: ignore[attr-defined,assignment]
        sleep=lambda wanted: real_sleep(min(wanted, seconds))
    )
