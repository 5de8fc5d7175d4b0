"""Run `dicom-connector all-in-one` as a real process for end-to-end tests.

The test owns the process: `stop()` (or the context manager) always ends it, with SIGKILL
as the last resort, so no test leaves a server behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import yaml

from tests.support.environment import free_port

ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"
READY_TIMEOUT_S = 90.0


class AllInOne:
    """One all-in-one process on free ports, with an admin HTTP client."""

    def __init__(self, data_dir: Path, config: dict[str, Any] | None = None) -> None:
        self.data_dir = data_dir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.client = httpx2.Client(
            base_url=f"http://127.0.0.1:{self.http_port}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30.0,
        )

    def start(self) -> None:
        """Start the process and wait for its `ready` line."""
        args = [
            sys.executable,
            "-m",
            "cli",
            "all-in-one",
            "--data-dir",
            str(self.data_dir),
            "--http-port",
            str(self.http_port),
            "--dicom-port",
            str(self.dicom_port),
            "--admin-token",
            ADMIN_TOKEN,
        ]
        if self.config is not None:
            config_file = self.data_dir.parent / f"{self.data_dir.name}-config.yaml"
            config_file.write_text(yaml.safe_dump(self.config), encoding="utf-8")
            args += ["--config", str(config_file)]
        self.output = []
        ready = threading.Event()
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

        def pump(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line)
                if line.strip() == "ready":
                    ready.set()

        threading.Thread(target=pump, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = "".join(self.output)
                self.stop()
                raise RuntimeError(f"all-in-one did not become ready:\n{log}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.proc = None

    def agent_pid(self) -> int:
        """The pid of the agent child process."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for child in children:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"agent" in cmdline:
                return int(child)
        raise RuntimeError("no agent child process found")

    def wait_for_exit(self, timeout: float) -> int:
        """Wait for the process to exit on its own (e.g. after its agent died)."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def acquisitions(self, **filters: str) -> list[dict[str, Any]]:
        """`GET /api/v1/acquisitions` with the given filters."""
        response = self.client.get("/api/v1/acquisitions", params=filters)
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float = 60.0, what: str = "condition"
    ) -> None:
        """Poll until `predicate()` holds; fail with the process output otherwise.

        A generous timeout bounds a hang, it is not a performance assertion.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; output:\n{''.join(self.output)}")

    def close(self) -> None:
        """Stop the process and close the client."""
        self.stop()
        self.client.close()


@contextmanager
def running_all_in_one(data_dir: Path, config: dict[str, Any] | None = None) -> Iterator[AllInOne]:
    """An all-in-one that is stopped however the block ends."""
    server = AllInOne(data_dir, config)
    try:
        server.start()
        yield server
    finally:
        server.close()
