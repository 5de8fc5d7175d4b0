"""The agent's durable intake path on its own: a listener + Spool + AgentState, nothing else.

Run as its own process by bench/intake.py: prints ``ready PORT`` once the listener accepts
associations on 127.0.0.1 and stops on SIGTERM (waiting for in-flight associations). This is
exactly what the agent runtime wires together for PUSH intake, minus the reaper and uploader, so
the benchmark measures intake alone. ``--count-only`` prints how many instances a data
directory's state records, so the harness never imports the agent itself. The ``prototype``
option measures a change the agent does not have (see docs/benchmarks.md). Several copies with
``--reuse-port`` on one data directory are what the agent runs with its intake workers
(agent/intake_workers.py), minus the agent's start-up recovery.

Must not import the control plane or the agent runtime.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from _pynetdicom_prototypes import cap_association_reactor_sleep

from agent.dicom.intake import identify_spooled
from agent.dicom.listeners import make_listener
from agent.spool import Spool
from agent.state import AgentState

AE_TITLE = "CONNECTOR"
STOP_TIMEOUT_SECONDS = 30.0


def main() -> None:
    """Serve until SIGTERM, or count with --count-only."""
    args = _parse_args()
    if args.count_only:
        print(count_instances(args.data_dir / "state.db"))
        return
    if args.assoc_loop_delay is not None:
        cap_association_reactor_sleep(args.assoc_loop_delay)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    state = AgentState.open(args.data_dir / "state.db")
    try:
        spool = Spool(args.data_dir / "spool", state)
        if not args.reuse_port:
            # Siblings sharing the port start together on an empty directory; recovery of a
            # spool others already write into would take their slots for leftovers.
            spool.recover(identify_spooled)
        options: dict[str, Any] = {}
        if args.dul_loop_delay is not None:
            options["dul_loop_delay"] = args.dul_loop_delay
        listener = make_listener(
            args.engine,
            ae_title=AE_TITLE,
            host="127.0.0.1",
            port=args.port,
            peers=(),
            spool=spool,
            share_port=args.reuse_port,
            **options,
        )
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        port = listener.start()
        try:
            print(f"ready {port}", flush=True)
            stopping.wait()
        finally:
            listener.stop(STOP_TIMEOUT_SECONDS)
    finally:
        state.close()


def count_instances(state_db: Path) -> int:
    """Instances the state records in any state: spooled, uploaded, skipped or failed."""
    state = AgentState.open(state_db)
    try:
        stats = state.stats()
    finally:
        state.close()
    return stats.spooled_count + stats.uploaded_count + stats.skipped_count + stats.failed_count


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--count-only", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--engine", choices=("lean", "pynetdicom"), default="lean")
    parser.add_argument("--dul-loop-delay", type=float, default=None)
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT so several processes share the port, as the agent's do",
    )
    prototypes = parser.add_argument_group("prototype")
    prototypes.add_argument(
        "--assoc-loop-delay",
        type=float,
        default=None,
        help="cap pynetdicom's fixed 1 ms association reactor sleep",
    )
    return parser.parse_args()


if __name__ == "__main__":
    main()
