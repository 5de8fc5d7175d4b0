"""The measuring loop shared by the intake benchmarks: fresh receiver, quiet machine, send, check.

Must not import pynetdicom or any dicom-connector package.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _machine import process_cpu_seconds, wait_until_quiet
from _processes import ProcessFailed
from _receivers import Receiver
from _report import Measurement, Outcome
from _sender import send


@dataclass(frozen=True)
class Plan:
    """What to send, how often, and how long to wait for other load to calm down."""

    files: Sequence[Path]
    rounds: int
    associations: Sequence[int]
    max_busy: float  # wait before each send until others use at most this CPU fraction...
    quiet_timeout: float  # ...but no longer than this many seconds
    keep: bool  # keep what the receivers stored (for inspection), not only their logs


def run_rounds(receivers: Sequence[Receiver], plan: Plan, workdir: Path) -> Outcome:
    """Measure every receiver with every association count, plan.rounds times.

    A receiver that fails to start, to answer, or to keep every instance it acknowledged is
    recorded as failed and left out of the later rounds; the others go on.
    """
    outcome = Outcome()
    # Rounds outermost, so a slow spell of the machine hits every receiver alike.
    for round_number in range(1, plan.rounds + 1):
        for receiver in receivers:
            for count in plan.associations:
                if receiver.name in outcome.failures:
                    continue
                run_dir = workdir / f"r{round_number}-{receiver.name}-x{count}"
                run_dir.mkdir()
                label = f"round {round_number}/{plan.rounds} {receiver.name:<26} x{count}"
                try:
                    run = _measure(receiver, plan, count, run_dir)
                except ProcessFailed as exc:
                    outcome.failures[receiver.name] = (
                        f"round {round_number}, {count} association(s): {exc}"
                    )
                    print(f"{label}: FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                finally:
                    if not plan.keep:
                        for child in run_dir.iterdir():
                            if child.is_dir():
                                shutil.rmtree(child, ignore_errors=True)
                    # Write back what this receiver left dirty (storescp never fsyncs) so the
                    # next receiver does not pay for it.
                    os.sync()
                outcome.measurements.append(run)
                print(
                    f"{label}: {run.seconds:6.2f} s {run.per_second:6.0f} inst/s "
                    f"(others used {run.busy_before:.0%} CPU before)",
                    file=sys.stderr,
                    flush=True,
                )
    return outcome


def _measure(receiver: Receiver, plan: Plan, associations: int, run_dir: Path) -> Measurement:
    with receiver.serve(run_dir) as session:
        busy = wait_until_quiet(plan.max_busy, plan.quiet_timeout, session.pids)
        cpu_before = process_cpu_seconds(session.pids)
        seconds = send(
            plan.files,
            port=session.port,
            called_ae=session.ae_title,
            associations=associations,
            log=run_dir / "storescu.log",
        )
        cpu = process_cpu_seconds(session.pids) - cpu_before if session.pids else None
    if session.received != len(plan.files):
        raise ProcessFailed(
            f"kept {session.received} of {len(plan.files)} acknowledged instances; "
            f"logs in {run_dir}"
        )
    total_bytes = sum(path.stat().st_size for path in plan.files)
    return Measurement(
        receiver.name, associations, seconds, len(plan.files), total_bytes, busy, cpu
    )
