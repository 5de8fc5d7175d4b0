"""Measurements of the intake benchmark and the Markdown report made of them.

Must not import pynetdicom or any dicom-connector package.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from _receivers import Receiver

BASELINES = ("orthanc", "storescp")


@dataclass(frozen=True)
class Measurement:
    """One timed send of all files to one freshly started receiver."""

    receiver: str
    associations: int
    seconds: float
    instances: int
    total_bytes: int
    busy_before: float  # fraction of the machine's CPU others used just before the send
    cpu_seconds: float | None  # CPU the receiver's processes used during the send, if known

    @property
    def per_second(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        """File megabytes per second, 1 MB = 10^6 bytes."""
        return self.total_bytes / self.seconds / 1e6

    @property
    def cpu_ms_per_instance(self) -> float | None:
        """Receiver CPU (all its threads, user + system) per instance, in milliseconds."""
        return None if self.cpu_seconds is None else self.cpu_seconds / self.instances * 1000


@dataclass
class Outcome:
    """The measurements made, and the receivers that failed (each with its first error)."""

    measurements: list[Measurement] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def report(outcome: Outcome, receivers: Sequence[Receiver], subjects: Sequence[str]) -> str:
    """The whole report: table of medians, subjects' ratios, load, and failed receivers."""
    results = outcome.measurements
    lines = [""]
    if results:
        lines += [table(results, {receiver.name: receiver.description for receiver in receivers})]
        lines += ["", *ratios(results, subjects), load_summary(results)]
    lines += [f"FAILED {name}: {error}" for name, error in outcome.failures.items()]
    return "\n".join(lines)


def table(results: Sequence[Measurement], descriptions: dict[str, str]) -> str:
    """A Markdown table: one row per receiver and association count, medians over rounds."""
    rows = [
        "| receiver | associations | inst/s | MB/s | CPU ms/inst | each round (inst/s) "
        "| what it does |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for (name, associations), runs in _grouped(results).items():
        each = ", ".join(f"{run.per_second:.0f}" for run in runs)
        cpu = [value for run in runs if (value := run.cpu_ms_per_instance) is not None]
        rows.append(
            f"| {name} | {associations} | {_median_rate(runs):.0f} | "
            f"{statistics.median(run.megabytes_per_second for run in runs):.1f} | "
            f"{f'{statistics.median(cpu):.1f}' if cpu else '-'} | {each} | "
            f"{descriptions[name]} |"
        )
    return "\n".join(rows)


def ratios(results: Sequence[Measurement], subjects: Sequence[str]) -> list[str]:
    """Lines giving each subject receiver's median rate as a multiple of each baseline's."""
    grouped = _grouped(results)
    lines = []
    for (name, associations), runs in grouped.items():
        if name not in subjects:
            continue
        against = [
            f"{_median_rate(runs) / _median_rate(grouped[baseline, associations]):.2f}x {baseline}"
            for baseline in BASELINES
            if (baseline, associations) in grouped
        ]
        if against:
            lines.append(f"{name}, {associations} association(s): {', '.join(against)}")
    return lines


def load_summary(results: Sequence[Measurement]) -> str:
    """One line saying how busy other processes kept the machine right before the sends."""
    busy = [run.busy_before for run in results]
    return (
        f"CPU used by others just before each send: median {statistics.median(busy):.0%}, "
        f"max {max(busy):.0%}"
    )


def _grouped(results: Sequence[Measurement]) -> dict[tuple[str, int], list[Measurement]]:
    grouped: dict[tuple[str, int], list[Measurement]] = defaultdict(list)
    for result in results:
        grouped[result.receiver, result.associations].append(result)
    return grouped


def _median_rate(runs: Sequence[Measurement]) -> float:
    return statistics.median(run.per_second for run in runs)
