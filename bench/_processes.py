"""Start, watch and always stop the helper processes of a benchmark run.

Everything here is plain subprocess and socket handling; it must not import pynetdicom, pydicom
or any dicom-connector package, so the harness process stays idle while receivers work.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# dcmtk and Orthanc on Debian leave Nagle's algorithm on unless told otherwise; with it, every
# small C-STORE response waits for a delayed ACK and the numbers measure the kernel, not the peer.
NAGLE_OFF = {"TCP_NODELAY": "1"}


class ProcessFailed(RuntimeError):
    """A helper process exited early, answered wrongly or did not become ready in time."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    For servers that cannot report the port they bound themselves (Orthanc, storescp).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessFailed(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ProcessFailed(f"nothing listened on port {port} within {timeout:.0f} s: {proc.args!r}")


@dataclass
class LineReader:
    """Collects a child's stdout lines on a thread so a full pipe never blocks the child."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)
    _pump_thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float) -> str:
        """Return the first stdout line starting with prefix; fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProcessFailed(
                    f"no line starting with {prefix!r} within {timeout:.0f} s from "
                    f"{self.proc.args!r}; output so far: {self.seen[-5:]!r}"
                )
            try:
                line = self.lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                assert self._pump_thread is not None
                if not self._pump_thread.is_alive() and self.lines.empty():
                    raise ProcessFailed(
                        f"{self.proc.args!r} closed its output (exit status "
                        f"{self.proc.poll()}) before printing "
                        f"{prefix!r}; output: {self.seen[-5:]!r}"
                    ) from None
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    capture_stdout: bool = False,
) -> subprocess.Popen[str]:
    """Start a helper with stderr (and stdout unless captured) going to a log file."""
    full_env = {**os.environ, **NAGLE_OFF, **(env or {})}
    with log.open("a") as log_file:
        try:
            return subprocess.Popen(
                [os.fspath(arg) for arg in argv],
                stdout=subprocess.PIPE if capture_stdout else log_file,
                stderr=log_file,
                env=full_env,
                cwd=cwd,
                text=True,
                # Its own process group, so a helper that forks (storescp --fork, the
                # all-in-one's control plane and agent) can be killed with all its children.
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ProcessFailed(not_installed(os.fspath(argv[0]))) from exc


def not_installed(program: str) -> str:
    """The error message for a missing external program."""
    return f"{program} is not installed; `make system-deps` installs dcmtk and Orthanc"


def stop(proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """Terminate a helper; kill its process group if it does not exit in time. Idempotent."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Children the helper left behind (a storescp fork still serving) share its process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(proc: subprocess.Popen[str], timeout: float = 15.0) -> Iterator[subprocess.Popen[str]]:
    """Yield proc and stop it on the way out, whatever happened."""
    try:
        yield proc
    finally:
        stop(proc, timeout)
