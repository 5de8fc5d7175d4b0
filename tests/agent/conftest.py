"""Fixtures for the agent tests: a state database, a spool, running DICOM listeners.

Every listener a test starts is stopped at teardown. Disk-full tests use
`tests.support.full_disk` (no mount needed, so they run in CI too).
"""

from __future__ import annotations

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
