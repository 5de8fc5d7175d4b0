"""`python -m cli ...` as a real process for end-to-end tests: output collected, always stopped.
`control_plane_process` starts `control-plane` on a free loopback port.

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
from pathlib import Path

from tests.support.environment import free_port

START_TIMEOUT_S = 60.0
CONTROL_PLANE_ADMIN_TOKEN = "cli-start-admin-token-0123456789"


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
        self._pump_thread = threading.Thread(target=self._pump, args=(ready,), daemon=True)
        self._pump_thread.start()

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
        """The exit status once the process ended by itself (it is killed after `timeout`);
        `output` then holds all it wrote."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        # The last lines may still be in the pipe when the process is gone.
        self._pump_thread.join(timeout)
        return status

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def control_plane_process(
    database_url: str, root: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[Process, str]:
    """`control-plane --db database_url` on a free port of 127.0.0.1 with `extra` arguments
    (blobs under `root/blobs` unless `extra` names a blob store), and its base URL."""
    port = free_port()
    args = ["control-plane", "--db", database_url, "--http-port", str(port)]
    args += ["--host", "127.0.0.1", "--admin-token", CONTROL_PLANE_ADMIN_TOKEN, *extra]
    if "--blob-url" not in extra and "--blob-dir" not in extra:
        args += ["--blob-dir", str(root / "blobs")]
    return Process(args, env or {}, lambda _line: False), f"http://127.0.0.1:{port}"
