"""Fixtures for the agent tests: a state database, a spool, running DICOM listeners, a tiny disk.

Every listener a test starts is stopped at teardown; the tiny tmpfs is unmounted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.dicom.scp import DicomListener
from agent.spool import Spool
from agent.state import AgentState


@pytest.fixture
def state(tmp_path: Path) -> Iterator[AgentState]:
    """A fresh state database in the test's directory."""
    opened = AgentState.open(tmp_path / "state.db")
    yield opened
    opened.close()


@pytest.fixture
def spool(tmp_path: Path, state: AgentState) -> Iterator[Spool]:
    """A spool without a free-space reserve, recording into `state`."""
    opened = Spool(tmp_path / "spool", state)
    yield opened
    opened.close()


@pytest.fixture
def start_listener(spool: Spool) -> Iterator[Callable[..., DicomListener]]:
    """Start a listener on 127.0.0.1, an OS-chosen port and `spool` unless told otherwise."""
    started: list[DicomListener] = []

    def start(**overrides: Any) -> DicomListener:
        options: dict[str, Any] = {
            "ae_title": "CONNECTOR",
            "host": "127.0.0.1",
            "port": 0,
            "peers": (),
            "spool": spool,
        }
        listener = DicomListener(**(options | overrides))
        listener.start()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop(timeout=5)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test, so writes hit a real ENOSPC.

    Skips (also in CI) when this machine does not let the test mount: that needs root or
    CAP_SYS_ADMIN, which unprivileged containers do not grant.
    """
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("cannot mount a tmpfs here: there is no mount command")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
