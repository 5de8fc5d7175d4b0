"""Fixtures for the agent tests: a state database, a spool, running DICOM listeners.

Every listener a test starts is stopped at teardown. Disk-full tests use
`tests.support.full_disk` (no mount needed, so they run in CI too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.dicom.listeners import ENGINES, IntakeEngine, Listener, make_listener
from agent.dicom.source import REQUESTOR_ENGINES, RequestorEngine
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


@pytest.fixture(params=ENGINES)
def intake_engine(request: pytest.FixtureRequest) -> IntakeEngine:
    """Each intake engine in turn: the SCP acceptance tests run against both."""
    engine: IntakeEngine = request.param
    return engine


@pytest.fixture(params=REQUESTOR_ENGINES)
def requestor_engine(request: pytest.FixtureRequest) -> RequestorEngine:
    """Each requestor engine of PULL in turn: the PULL acceptance tests run against both."""
    engine: RequestorEngine = request.param
    return engine


@pytest.fixture
def start_listener(spool: Spool, intake_engine: IntakeEngine) -> Iterator[Callable[..., Listener]]:
    """Start a listener of `intake_engine` on 127.0.0.1, an OS-chosen port and `spool` unless
    told otherwise."""
    started: list[Listener] = []

    def start(**overrides: Any) -> Listener:
        options: dict[str, Any] = {
            "ae_title": "CONNECTOR",
            "host": "127.0.0.1",
            "port": 0,
            "peers": (),
            "spool": spool,
        }
        listener = make_listener(intake_engine, **(options | overrides))
        listener.start()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop(timeout=5)
