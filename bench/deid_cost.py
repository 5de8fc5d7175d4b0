"""What de-identification adds per instance: the Basic Profile and a 30-rule Flywheel profile.

    .venv/bin/python bench/deid_cost.py [--instances 200] [--rounds 5]

The reaper reads each spooled instance and de-identifies it before upload, so the cost that
matters is per instance, on the agent's CPU. Each round reads every file (the baseline: what
the reaper does anyway), then reads and de-identifies every file under ``basic`` and under
the Flywheel profile of `flywheel_30_rule_profile`; rounds interleave the three, so a busy
neighbour on the shared machine weighs on all of them alike. The target (issue 7) is at most
1 ms added per 130 KB instance. `measure_deid_cost` is what bench/upload.py imports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # bench/ scripts run by path, so the repository root is not importable by default.
    sys.path.insert(0, str(REPO_ROOT))

from _instances import write_instances  # noqa: E402

from common.config import DeidConfig  # noqa: E402
from common.deid.engine import Deidentifier  # noqa: E402

TARGET_ADDED_US = 1000.0


@dataclass(frozen=True)
class DeidCost:
    """Median time per instance over the rounds, and what it adds to reading the bytes."""

    name: str
    instances: int
    mean_bytes: int
    per_instance_us: float
    baseline_us: float
    cpu_us: float  # CPU time of this process per instance: less sensitive to busy neighbours
    baseline_cpu_us: float

    @property
    def added_us(self) -> float:
        """Microseconds de-identification adds to reading the instance."""
        return self.per_instance_us - self.baseline_us

    @property
    def added_cpu_us(self) -> float:
        """CPU microseconds de-identification adds to reading the instance."""
        return self.cpu_us - self.baseline_cpu_us


def flywheel_30_rule_profile() -> dict[str, Any]:
    """A realistic site profile: 30 field rules of every kind fw-file-rs supports."""
    replace = [
        "PatientName",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
    ]
    remove = [
        "PatientBirthDate",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientComments",
        "AdditionalPatientHistory",
        "MedicalRecordLocator",
        "StudyComments",
        "RequestingPhysician",
        "ImageComments",
    ]
    hashed = ["PatientID", "AccessionNumber", "StudyID"]
    uids = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"]
    dates = ["StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"]
    fields: list[dict[str, Any]] = [
        *({"name": name, "replace-with": "REDACTED"} for name in replace),
        *({"name": name, "remove": True} for name in remove),
        *({"name": name, "hash": True} for name in hashed),
        *({"name": name, "hashuid": True} for name in uids),
        *({"name": name, "increment-date": True} for name in dates),
        {"name": "SeriesDescription", "keep": True},
    ]  # fmt: skip
    assert len(fields) == 30
    return {
        "version": 1,
        "dicom": {"date-increment": -17, "remove-private-tags": True, "fields": fields},
    }


def measure_deid_cost(
    paths: Sequence[Path], *, rounds: int = 5, salt: str = "bench-salt"
) -> list[DeidCost]:
    """Per-instance cost of reading `paths`, and of reading and de-identifying them under
    ``basic`` and the 30-rule Flywheel profile: [baseline, basic, flywheel-30]."""
    basic = Deidentifier.from_config(DeidConfig(profile="basic"), salt)
    flywheel = Deidentifier.from_config(DeidConfig(profile=flywheel_30_rule_profile()), salt)
    assert basic is not None
    assert flywheel is not None
    runs: dict[str, Callable[[Path], object]] = {
        "read only (baseline)": lambda path: path.read_bytes(),
        "basic": lambda path: basic.deidentify(path.read_bytes()),
        "flywheel, 30 rules": lambda path: flywheel.deidentify(path.read_bytes()),
    }
    for run in runs.values():  # warm the page cache and the engines
        for path in paths[:10]:
            run(path)
    timings: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for path in paths:
                run(path)
            timings[name].append((time.perf_counter() - start) / len(paths) * 1e6)
            cpu[name].append((time.process_time() - start_cpu) / len(paths) * 1e6)
    mean_bytes = sum(path.stat().st_size for path in paths) // len(paths)
    baseline = "read only (baseline)"
    return [
        DeidCost(
            name,
            len(paths),
            mean_bytes,
            statistics.median(timings[name]),
            statistics.median(timings[baseline]),
            statistics.median(cpu[name]),
            statistics.median(cpu[baseline]),
        )
        for name in runs
    ]


def main() -> None:
    """Print the costs as a Markdown table, with the machine's load."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deid-cost-") as tmp:
        paths = write_instances(args.instances, Path(tmp), series=4)
        load_before = os.getloadavg()[0]
        costs = measure_deid_cost(paths, rounds=args.rounds)
        load_after = os.getloadavg()[0]
    print(f"{args.instances} instances of {costs[0].mean_bytes} bytes, {args.rounds} rounds; "
          f"load average {load_before:.2f} before, {load_after:.2f} after; "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print()
    print("| run | µs per instance | added to reading | CPU µs added | target |")
    print("|---|---:|---:|---:|---|")
    for cost in costs:
        if cost.name.startswith("read only"):
            print(f"| {cost.name} | {cost.per_instance_us:.0f} | - | - | |")
            continue
        verdict = "met" if cost.added_us <= TARGET_ADDED_US else "missed"
        print(f"| {cost.name} | {cost.per_instance_us:.0f} | {cost.added_us:.0f} "
              f"| {cost.added_cpu_us:.0f} | {verdict} (≤ {TARGET_ADDED_US:.0f} µs) |")  # fmt: skip


if __name__ == "__main__":
    main()
