"""The link recorder: batched writes that survive an outage and cannot be poisoned by one row."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy.exc import OperationalError

from control_plane.db import create_engine, create_sessionmaker
from control_plane.fleet.health_rules import AgentStatus, Verdict
from control_plane.fleet.recorder import LinkRecorder, LinkState
from tests.control_plane.harness import ControlPlane
from tests.support.environment import free_port

NOW = dt.datetime(2026, 11, 28, 8, 0, tzinfo=dt.UTC)
OK = Verdict(status=AgentStatus.ok, reasons=())
STATE = LinkState(
    agent_version="1.2.3",
    config_revision=4,
    config_failed_revision=None,
    config_failure_reason=None,
    connected=True,
    connected_at=NOW,
    disconnected_at=None,
    last_seen_at=NOW,
    health_report=None,
    health_reported_at=None,
    health_status=None,
    health_reasons=None,
)


async def test_batch_refused_by_the_database_is_dropped_and_later_batches_are_stored(
    control_plane: ControlPlane,
) -> None:
    await control_plane.register_agent()
    agents = (await control_plane.admin.get("/api/v1/sites/hospital-a/agents")).json()["items"]
    agent_id = uuid.UUID(agents[0]["id"])
    recorder = control_plane.resources.hub.recorder
    # A report of an agent that does not exist violates the history's foreign key.
    recorder.record_report(uuid.uuid4(), NOW, OK, {"spool_depth": 1})

    await recorder.flush()

    assert recorder.pending == 0
    recorder.record_state(agent_id, STATE)
    await recorder.flush()
    agent = (await control_plane.admin.get(f"/api/v1/agents/{agent_id}")).json()
    assert agent["config_revision"] == 4
    assert agent["health"]["agent_version"] == "1.2.3"


async def test_unreachable_database_keeps_everything_for_the_next_flush() -> None:
    # A port nobody listens on: the connection is refused at once.
    engine = create_engine(f"postgresql://127.0.0.1:{free_port()}/nowhere")
    recorder = LinkRecorder(create_sessionmaker(engine), history_per_agent=10)
    try:
        recorder.record_state(uuid.uuid4(), STATE)
        recorder.record_report(uuid.uuid4(), NOW, OK, {"spool_depth": 1})

        with pytest.raises(OperationalError):
            await recorder.flush()

        assert recorder.pending == 2
    finally:
        await engine.dispose()
