"""What a benchmark records about the machine it ran on, and how busy others kept it.

Numbers from a shared two-core machine mean little without the machine and its load next to
them. Linux only (/proc). Must not import pynetdicom or any dicom-connector package.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path


def describe(workdir: Path, files: Sequence[Path]) -> list[str]:
    """Lines naming the date, CPU, kernel, load, tool versions, filesystem and the data sent.

    Also reads every file once, so the first measurement does not pay for a cold page cache.
    """
    total_bytes = sum(len(path.read_bytes()) for path in files)
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    filesystem = subprocess.run(
        ["df", "--output=fstype", workdir], capture_output=True, text=True, check=False
    ).stdout.split()[-1:]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"machine: {os.cpu_count()} cores ({cpu_model}), {platform.system()} "
        f"{platform.release()}, load average {load}",
        f"python {platform.python_version()}, pynetdicom {version('pynetdicom')}, "
        f"pydicom {version('pydicom')}, {_first_line(['storescu', '--version'])}, "
        f"{_first_line(['/usr/sbin/Orthanc', '--version'])}",
        f"workdir: {workdir} ({''.join(filesystem) or 'unknown filesystem'})",
        f"data: {len(files)} synthetic MR instances, {total_bytes / len(files) / 1000:.0f} KB "
        f"each, {total_bytes / 1e6:.1f} MB in all",
    ]


def busy_fraction(exclude_pids: Sequence[int] = (), interval: float = 1.0) -> float:
    """Fraction of all CPU time used over the next interval seconds, except by exclude_pids.

    The excluded processes (and their descendants) are the receiver under test: its own idle
    polling or background work is not someone else's load.
    """
    idle_before, total_before = _cpu_times()
    excluded_before = process_cpu_seconds(exclude_pids)
    time.sleep(interval)
    idle_after, total_after = _cpu_times()
    excluded = (process_cpu_seconds(exclude_pids) - excluded_before) * os.sysconf("SC_CLK_TCK")
    total = total_after - total_before
    if not total:
        return 0.0
    return max(0.0, (total - (idle_after - idle_before) - excluded) / total)


def wait_until_quiet(max_busy: float, timeout: float, exclude_pids: Sequence[int] = ()) -> float:
    """Wait until others keep the CPU at most max_busy busy; return the last reading.

    Gives up after timeout seconds and returns the reading anyway: the caller records it.
    """
    deadline = time.monotonic() + timeout
    busy = busy_fraction(exclude_pids)
    while busy > max_busy and time.monotonic() < deadline:
        busy = busy_fraction(exclude_pids)
    return busy


def process_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by pids and their living descendants.

    Descendants are found through /proc/PID/task/TID/children; a child that already exited
    is not counted, so this suits receivers whose worker processes outlive the measurement.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _with_descendants(pids):
        try:
            # Fields after the ")" that ends the command name: utime and stime are 12 and 13.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _with_descendants(pids: Sequence[int]) -> set[int]:
    found: set[int] = set()
    pending = list(pids)
    while pending:
        pid = pending.pop()
        if pid in found:
            continue
        found.add(pid)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                pending += [int(child) for child in children.read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def _cpu_times() -> tuple[int, int]:
    # First line of /proc/stat: "cpu user nice system idle iowait irq softirq steal ...".
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return idle, sum(fields[:8])


def _first_line(argv: list[str]) -> str:
    try:
        output = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return f"{argv[0]} missing"
    return next((line.strip("$ ") for line in output.splitlines() if line.strip()), argv[0])
