"""Send the benchmark files with dcmtk storescu and time it.

One storescu process is one association; ``associations`` processes run side by side, each with
its share of the files. The clock runs from starting the first storescu until the last one has
exited, so it includes association set-up and release: what a scanner pushing a series sees.
Must not import pynetdicom or any dicom-connector package.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from _processes import NAGLE_OFF, ProcessFailed, not_installed

SENDER_AE_TITLE = "BENCHSCU"
# Generous: a round of a few hundred instances takes seconds; this only catches a hung peer.
SEND_TIMEOUT_SECONDS = 600.0


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Split files into parts lists of nearly equal length, keeping their order."""
    size, extra = divmod(len(files), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        chunks.append(list(files[start:end]))
        start = end
    return chunks


def send(
    files: Sequence[Path], *, port: int, called_ae: str, associations: int, log: Path
) -> float:
    """Send files to 127.0.0.1:port over associations parallel storescu runs; return seconds.

    Raises ProcessFailed when a storescu exits with an error or does not finish in time; every
    storescu started here has exited when this returns or raises.
    """
    argv_head = [
        "storescu",
        "-xe",  # explicit VR little endian first: the files' own syntax, so nothing is converted
        "-R",  # propose only the SOP classes present in the files
        "-aet",
        SENDER_AE_TITLE,
        "-aec",
        called_ae,
        "127.0.0.1",
        str(port),
    ]
    env = {**os.environ, **NAGLE_OFF}
    procs: list[subprocess.Popen[bytes]] = []
    timed_out = threading.Event()
    # A watchdog kills a hung send; the waits below block in waitpid. `Popen.wait(timeout)`
    # polls instead, sleeping up to 50 ms between looks, which rounded a 0.45 s send up by as
    # much as 11% and made rates of nearby receivers come out identical.
    watchdog = threading.Timer(SEND_TIMEOUT_SECONDS, _kill, args=(procs, timed_out))
    with log.open("ab") as log_file:
        started = time.perf_counter()
        try:
            for chunk in split(files, associations):
                procs.append(
                    subprocess.Popen(
                        [*argv_head, *map(str, chunk)],
                        stdout=log_file,
                        stderr=log_file,
                        env=env,
                    )
                )
            watchdog.start()
            for proc in procs:
                proc.wait()
            elapsed = time.perf_counter() - started
        except FileNotFoundError as exc:
            raise ProcessFailed(not_installed("storescu")) from exc
        finally:
            watchdog.cancel()
            _kill(procs)
    if timed_out.is_set():
        raise ProcessFailed(
            f"storescu did not finish within {SEND_TIMEOUT_SECONDS:.0f} s; see {log}"
        )
    failed = [proc.returncode for proc in procs if proc.returncode != 0]
    if failed:
        raise ProcessFailed(f"storescu exited with {failed} sending to port {port}; see {log}")
    return elapsed


def _kill(procs: Sequence[subprocess.Popen[bytes]], killed: threading.Event | None = None) -> None:
    """Kill and reap every storescu still running; set `killed` if there was one."""
    for proc in procs:
        if proc.poll() is None:
            if killed is not None:
                killed.set()
            proc.kill()
            proc.wait()
