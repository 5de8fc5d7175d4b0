"""Intake benchmark: how fast each C-STORE receiver takes a series from dcmtk storescu.

    .venv/bin/python bench/intake.py [--instances 300] [--rounds 3]

Generates synthetic ~130 KB MR instances once, then, round after round, starts each receiver
fresh (dcmtk storescp, Orthanc, a bare pynetdicom SCP, the agent's durable intake, the
all-in-one connector), sends all files over one association and over four parallel ones, checks
the receiver kept every instance, and stops it. Prints the machine, a Markdown table of medians
and the agent's ratios against Orthanc and storescp. See docs/benchmarks.md.

The harness itself only starts processes and waits; it must not import pynetdicom.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _instances import write_instances
from _machine import describe
from _receivers import AgentIntake, AllInOne, Orthanc, PynetdicomFloor, Receiver, StoreScp
from _report import report
from _rounds import Plan, run_rounds

AGENT_RECEIVERS = (
    "agent-intake",
    "agent-intake-baseline",
    "agent-intake-pynetdicom",
    "all-in-one",
    "all-in-one-uploading",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; return the process exit status."""
    args = _parse_args(argv)
    receivers = _select_receivers(args)
    workdir = Path(tempfile.mkdtemp(prefix="intake-bench-", dir=args.workdir))
    try:
        files = write_instances(args.instances, workdir / "instances")
        print("\n".join([*describe(workdir, files), f"pynetdicom tuning: {_tuning(args)}"]))
        plan = Plan(
            files=files,
            rounds=args.rounds,
            associations=[int(value) for value in args.associations.split(",")],
            max_busy=args.max_busy,
            quiet_timeout=args.quiet_timeout,
            keep=args.keep,
        )
        outcome = run_rounds(receivers, plan, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(outcome, receivers, AGENT_RECEIVERS))
    return 1 if outcome.failures else 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=300, help="instances per send")
    parser.add_argument("--rounds", type=int, default=3, help="runs per receiver and mode")
    parser.add_argument(
        "--associations",
        default="1,4",
        help="comma-separated numbers of parallel storescu associations (default 1,4)",
    )
    parser.add_argument(
        "--receivers",
        default=None,
        help="comma-separated subset of: storescp, orthanc, pynetdicom-floor, agent-intake, "
        "agent-intake-pynetdicom, agent-intake-baseline (with --baseline), all-in-one, "
        "all-in-one-uploading (default: every one that is installed)",
    )
    parser.add_argument(
        "--max-busy",
        type=float,
        default=0.25,
        help="before each send, wait (up to --quiet-timeout s) until other processes use at "
        "most this fraction of the CPU (default 0.25)",
    )
    parser.add_argument("--quiet-timeout", type=float, default=120.0)
    tuning = parser.add_argument_group("tuning of the pynetdicom receivers (default: their own)")
    tuning.add_argument(
        "--dul-loop-delay",
        type=float,
        default=None,
        help="seconds, e.g. 0 (floor, agent-intake-pynetdicom)",
    )
    tuning.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes sharing the port with SO_REUSEPORT (floor, agent-intake)",
    )
    tuning.add_argument(
        "--max-pdu", type=int, default=None, help="bytes, 0 = unlimited (floor only)"
    )
    tuning.add_argument(
        "--no-log-handlers",
        action="store_true",
        help="unbind pynetdicom's standard PDU/DIMSE log handlers (floor only)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. a worktree of main): adds receiver agent-intake-baseline, "
        "its lean engine intake, for a before/after in one run",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--keep", action="store_true", help="keep files and receiver logs")
    return parser.parse_args(argv)


def _tuning(args: argparse.Namespace) -> str:
    chosen = [
        f"{name}={value}"
        for name, value in (
            ("dul_loop_delay", args.dul_loop_delay),
            ("max_pdu", args.max_pdu),
            ("no_log_handlers", args.no_log_handlers or None),
            ("processes", args.processes if args.processes > 1 else None),
        )
        if value is not None
    ]
    return ", ".join(chosen) or "none (each receiver's defaults)"


def _select_receivers(args: argparse.Namespace) -> list[Receiver]:
    available: dict[str, Receiver] = {
        "storescp": StoreScp(),
        "orthanc": Orthanc(),
        "pynetdicom-floor": PynetdicomFloor(
            dul_loop_delay=args.dul_loop_delay,
            max_pdu=args.max_pdu,
            log_handlers=not args.no_log_handlers,
            processes=args.processes,
        ),
    }
    missing: dict[str, str] = {}
    if all(_importable(f"agent.{module}") for module in ("dicom.scp", "spool", "state")):
        available["agent-intake"] = AgentIntake(processes=args.processes)
        available["agent-intake-pynetdicom"] = AgentIntake(
            name="agent-intake-pynetdicom",
            description="agent pynetdicom engine + Spool + AgentState (fsync + SQLite commit "
            "per instance)",
            engine="pynetdicom",
            dul_loop_delay=args.dul_loop_delay,
            processes=args.processes,
        )
        if args.baseline is not None:
            available["agent-intake-baseline"] = AgentIntake(
                name="agent-intake-baseline",
                description=f"agent-intake as built in {args.baseline}",
                processes=args.processes,
                source=args.baseline.resolve(),
            )
    else:
        missing["agent-intake"] = missing["agent-intake-pynetdicom"] = (
            "agent.dicom.scp, agent.spool or agent.state is missing"
        )
    if _importable("cli.all_in_one") and _importable("agent.runtime"):
        available["all-in-one"] = AllInOne()
        available["all-in-one-uploading"] = AllInOne(
            name="all-in-one-uploading",
            description="all-in-one, acquisition_delay 1s: each series uploads while later "
            "ones arrive",
            acquisition_delay_seconds=1,
        )
    else:
        missing["all-in-one"] = missing["all-in-one-uploading"] = (
            "cli.all_in_one or agent.runtime is missing"
        )
    if args.receivers is None:
        for name, reason in missing.items():
            print(f"skipping {name}: {reason}", file=sys.stderr)
        return list(available.values())
    chosen = []
    for name in args.receivers.split(","):
        if name in missing:
            raise SystemExit(f"receiver {name!r} cannot run: {missing[name]}")
        if name not in available:
            raise SystemExit(f"unknown receiver {name!r}; choose from {', '.join(available)}")
        chosen.append(available[name])
    return chosen


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


if __name__ == "__main__":
    sys.exit(main())
