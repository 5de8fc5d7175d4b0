"""`python -m cli ...` as a real process for end-to-end tests: output collected, always stopped.

Each process runs in a session of its own, so the last-resort SIGKILL reaches whatever it
started too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

START_TIMEOUT_S = 60.0


class Process:
    """One `python -m cli ...` process whose output is collected; `stop()` always ends it."""

    def __init__(self, args: list[str], env: dict[str, str], ready: Callable[[str], bool]):
        self.output: list[str] = []
        self._ready_line = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
            start_new_session=True,
        )
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()

    def _pump(self, ready: Callable[[str], bool]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if ready(line):
                self._ready_line.set()

    def wait_ready(self, probe: Callable[[], bool] | None = None) -> None:
        """Wait for the ready line (or `probe()`); fail with the output if it never comes."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self._ready_line.is_set() or (probe is not None and probe())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("process did not become ready:\n" + "".join(self.output))
            time.sleep(0.05)

    def wait_exit(self, timeout: float = START_TIMEOUT_S) -> int:
        """The exit status once the process ended by itself (it is killed after `timeout`)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
