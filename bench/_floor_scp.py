"""A bare pynetdicom C-STORE SCP that accepts and discards: the floor of the intake benchmark.

Run as its own process by bench/intake.py: prints ``ready PORT`` once it listens on 127.0.0.1 and
``received N`` after SIGTERM. With no options it runs pynetdicom's defaults, which is what any
pynetdicom receiver starts from; the options reproduce the tuning proposals measured in
docs/benchmarks.md. Must not import any dicom-connector package.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import threading

from _pynetdicom_prototypes import ReusePortServer, cap_association_reactor_sleep
from pynetdicom import AE, StoragePresentationContexts, _config, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

SUCCESS = 0x0000


def main() -> None:
    """Serve until SIGTERM, then report how many instances were accepted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dul-loop-delay", type=float, default=None)
    parser.add_argument("--max-pdu", type=int, default=None)
    parser.add_argument("--reuse-port", action="store_true")
    parser.add_argument(
        "--no-log-handlers",
        action="store_true",
        help="do not bind pynetdicom's standard PDU/DIMSE log handlers",
    )
    parser.add_argument(
        "--assoc-loop-delay",
        type=float,
        default=None,
        help="prototype: cap pynetdicom's fixed 1 ms association reactor sleep",
    )
    args = parser.parse_args()
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    if args.assoc_loop_delay is not None:
        cap_association_reactor_sleep(args.assoc_loop_delay)
    if args.no_log_handlers:
        # The standard handlers format every PDU and DIMSE message into text even when the
        # logger drops it; "none" must be set before the server binds its default handlers.
        _config.LOG_HANDLER_LEVEL = "none"

    received = itertools.count()
    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, lambda event: _discard(event, received)),
    ]
    if args.dul_loop_delay is not None:
        delay = args.dul_loop_delay
        handlers.append((evt.EVT_CONN_OPEN, lambda event: _set_loop_delay(event, delay)))

    ae = AE(ae_title="FLOOR")
    ae.supported_contexts = StoragePresentationContexts
    ae.maximum_associations = 32
    if args.max_pdu is not None:
        ae.maximum_pdu_size = args.max_pdu
    server = ae.make_server(
        ("127.0.0.1", args.port),
        evt_handlers=handlers,
        server_class=ReusePortServer if args.reuse_port else ThreadedAssociationServer,
    )
    # make_server does not register the server, but AssociationServer.shutdown unregisters it.
    ae._servers.append(server)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"ready {server.server_address[1]}", flush=True)
    stopping.wait()
    server.shutdown()
    # itertools.count has no getter; the next value is the number of values handed out.
    print(f"received {next(received)}", flush=True)


def _discard(event: Event, received: itertools.count[int]) -> int:
    next(received)
    return SUCCESS


def _set_loop_delay(event: Event, delay: float) -> None:
    event.assoc.dul._run_loop_delay = delay


if __name__ == "__main__":
    main()
