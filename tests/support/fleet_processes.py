"""Real `dicom-connector control-plane` and `dicom-connector agent` processes for end-to-end
fleet tests: free loopback ports, output collected, every process stopped by whoever started it
(SIGTERM, then SIGKILL as the last resort; `kill()` for a crash)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2

from tests.support.environment import free_port

START_TIMEOUT_S = 60.0
AGENT_ENV = {
    "DICOM_CONNECTOR_AGENT_DICOM_HOST": "127.0.0.1",
    "DICOM_CONNECTOR_AGENT_SPOOL_RESERVE_BYTES": "0",
    "DICOM_CONNECTOR_AGENT_REAP_INTERVAL": "0.1",
    "DICOM_CONNECTOR_AGENT_LINK_BACKOFF_BASE": "0.1",
    "DICOM_CONNECTOR_AGENT_LINK_BACKOFF_CAP": "1",
    "DICOM_CONNECTOR_AGENT_LINK_UNAUTHORIZED_RETRY_INTERVAL": "0.5",
    # These agents are about the fleet, not intake: one intake process spares each start a
    # worker process (~1 s of CPU) on a suite that keeps every core busy.
    "DICOM_CONNECTOR_AGENT_INTAKE_PROCESSES": "1",
}


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

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the process (and anything it started): a crash, nothing cleaned up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class ControlPlaneProcess:
    """A `dicom-connector control-plane` on a fixed port, so that it can be restarted there."""

    def __init__(
        self, database_url: str, root: Path, stack: ExitStack, admin_token: str, env: dict[str, str]
    ) -> None:
        self.database_url = database_url
        self.root = root
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._stack = stack
        self._admin_token = admin_token
        self._env = env
        self.admin = httpx2.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
        )
        stack.callback(self.admin.close)
        self.process: Process | None = None

    def start(self) -> None:
        """Start it and wait until /healthz answers."""
        args = ["control-plane", "--db", self.database_url, "--http-port", str(self.http_port)]
        args += ["--blob-dir", str(self.root / "blobs"), "--admin-token", self._admin_token]
        args += ["--host", "127.0.0.1"]
        process = Process(args, self._env, lambda _line: False)
        self._stack.callback(process.stop)
        process.wait_ready(self._healthy)
        self.process = process

    def _healthy(self) -> bool:
        try:
            return httpx2.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """An API call as the admin that must succeed; its JSON answer."""
        response = self.admin.request(method, path, **kwargs)
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json() if response.content else None

    def eventually(self, path: str, holds: Callable[[Any], bool], within: float = 90) -> Any:
        """Poll GET `path` until `holds(answer)`; return that answer."""
        deadline = time.monotonic() + within
        while True:
            answer = self.call("GET", path)
            if holds(answer):
                return answer
            if time.monotonic() > deadline:
                raise AssertionError(f"GET {path} still does not hold after {within} s: {answer}")
            time.sleep(0.1)


def start_agent(
    control_plane_url: str,
    token: str,
    data_dir: Path,
    stack: ExitStack,
    *,
    dicom_port: int | None = None,
) -> Process:
    """An agent process linked to `control_plane_url`, started once it accepts DICOM.

    With `dicom_port` it listens there whatever the config says; without, on the config's
    `dicom.port`.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir.parent / f"{data_dir.name}.token"
    token_file.write_text(token, encoding="utf-8")
    args = ["agent", "--control-plane", control_plane_url, "--token-file", str(token_file)]
    args += ["--data-dir", str(data_dir)]
    env = dict(AGENT_ENV)
    if dicom_port is not None:
        env["DICOM_CONNECTOR_AGENT_DICOM_PORT_OVERRIDE"] = str(dicom_port)
    process = Process(args, env, lambda line: line.startswith("agent-ready"))
    stack.callback(process.stop)
    process.wait_ready()
    return process
