"""A/B of the intake tuning proposals in docs/benchmarks.md, interleaved round by round.

    .venv/bin/python bench/intake_tuning.py [--instances 300] [--rounds 3] [--variants a,b]

Each variant is the agent's intake (or the pynetdicom floor) with one change; Orthanc runs in
the same rounds as the reference. Interleaving matters on a shared machine: a busy spell then
slows every variant of that round, not one of them. The changes the agent does not have yet are
prototyped in bench/_agent_intake.py and bench/_floor_scp.py, never in agent/.

The harness itself only starts processes and waits; it must not import pynetdicom.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _instances import write_instances
from _machine import describe
from _receivers import AgentIntake, Orthanc, PynetdicomFloor, Receiver
from _report import report
from _rounds import Plan, run_rounds

VARIANTS: dict[str, Receiver] = {
    "orthanc": Orthanc(),
    "floor": PynetdicomFloor(name="floor", description="bare pynetdicom SCP, its defaults"),
    "floor-agent-settings": PynetdicomFloor(
        name="floor-agent-settings",
        description="bare SCP with the agent's pynetdicom settings (0.2 ms, 1 MiB PDU, no log)",
        # As agent/dicom/scp.py sets them; pynetdicom's own: 1 ms DUL sleep, 16 KiB PDUs and
        # its standard log handlers bound.
        dul_loop_delay=0.0002,
        max_pdu=1 << 20,
        log_handlers=False,
    ),
    "agent": AgentIntake(name="agent", description="agent intake as it is"),
    "agent-dul0": AgentIntake(
        name="agent-dul0", description="agent, DUL loop delay 0", dul_loop_delay=0.0
    ),
    "agent-assoc-0.1ms": AgentIntake(
        name="agent-assoc-0.1ms",
        description="agent, pynetdicom association reactor sleeping 0.1 ms instead of 1 ms",
        assoc_loop_delay=0.0001,
    ),
    "agent-2proc": AgentIntake(
        name="agent-2proc",
        description="agent, 2 processes sharing the port (SO_REUSEPORT), one state DB",
        processes=2,
    ),
    "agent-2proc-dul1ms": AgentIntake(
        name="agent-2proc-dul1ms",
        description="agent, 2 processes, DUL loop delay 1 ms (pynetdicom's) instead of 0.2 ms",
        processes=2,
        dul_loop_delay=0.001,
    ),
    "agent-4proc": AgentIntake(
        name="agent-4proc",
        description="agent, 4 processes sharing the port (SO_REUSEPORT), one state DB",
        processes=4,
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen variants and print the report; return the process exit status."""
    args = _parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    receivers = [VARIANTS[name] for name in args.variants]
    workdir = Path(tempfile.mkdtemp(prefix="intake-tuning-", dir=args.workdir))
    try:
        files = write_instances(args.instances, workdir / "instances")
        print("\n".join(describe(workdir, files)), flush=True)
        plan = Plan(
            files=files,
            rounds=args.rounds,
            associations=args.associations,
            max_busy=args.max_busy,
            quiet_timeout=args.quiet_timeout,
            keep=False,
        )
        outcome = run_rounds(receivers, plan, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(outcome, receivers, [name for name in args.variants if name != "orthanc"]))
    return 1 if outcome.failures else 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--associations",
        type=lambda text: [int(value) for value in text.split(",")],
        default=[1, 4],
    )
    parser.add_argument(
        "--variants",
        type=lambda text: text.split(","),
        default=list(VARIANTS),
        help=f"comma-separated subset of: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--max-busy", type=float, default=0.25)
    parser.add_argument("--quiet-timeout", type=float, default=120.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
