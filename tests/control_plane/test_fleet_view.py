"""The in-memory fleet view behind the fleet routes: what a link records shows at once, the
clock turns agents missing, answers match the models built from the database, and what
another replica changed arrives at the next resync (or at once, for a lookup of something
this process did not know yet).

Runs on SQLite and PostgreSQL. States are recorded through the hub's recorder, as the links
do; "another replica" is a second app on the same database. Time is a manual clock.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from control_plane.db import create_engine, create_sessionmaker
from control_plane.fleet.health import (
    HealthContext,
    agent_public,
    agent_summary,
    is_connected,
    record_of,
    select_records,
    site_verdict,
    verdict,
)
from control_plane.fleet.health_rules import AgentStatus, Verdict
from control_plane.fleet.recorder import LinkState
from control_plane.fleet.view import FleetView
from control_plane.models import Agent
from control_plane.schemas import AgentPublic, ItemList
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import HEALTHY, ControlPlane, ManualClock, started_control_plane
from tests.support.environment import free_port

HEARTBEAT_S = 10.0
START = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
SITE = "hospital-a"


def heartbeat(at: dt.datetime, *, listener_ok: bool = True) -> LinkState:
    """The state a link records after a health report at `at`."""
    report = HEALTHY.model_copy(update={"listener_ok": listener_ok})
    reasons = [] if listener_ok else ["the DICOM listener is down: no images can be received"]
    return LinkState(
        agent_version="9.8.7",
        config_revision=0,
        config_failed_revision=None,
        config_failure_reason=None,
        connected=True,
        connected_at=START,
        disconnected_at=None,
        last_seen_at=at,
        health_report=report.model_dump(mode="json"),
        health_reported_at=at,
        health_status="ok" if listener_ok else "unhealthy",
        health_reasons=reasons,
    )


@pytest.fixture
def clock() -> ManualClock:
    """The control plane's clock."""
    return ManualClock(START)


@pytest.fixture
def settings(settings: ControlPlaneSettings) -> ControlPlaneSettings:
    """The default settings with the test's heartbeat interval."""
    return settings.model_copy(update={"heartbeat_interval_s": HEARTBEAT_S})


@pytest.fixture
async def control_plane(
    settings: ControlPlaneSettings, clock: ManualClock
) -> AsyncIterator[ControlPlane]:
    """A started control plane on the manual clock."""
    async with started_control_plane(settings, clock) as started:
        yield started


async def _get(control_plane: ControlPlane, path: str) -> Any:
    response = await control_plane.admin.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def _register(control_plane: ControlPlane, name: str = "edge-1") -> uuid.UUID:
    await control_plane.register_agent(site=SITE, name=name)
    listed = await _get(control_plane, f"/api/v1/sites/{SITE}/agents")
    return next(uuid.UUID(item["id"]) for item in listed["items"] if item["name"] == name)


async def test_heartbeat_shows_before_the_recorder_writes_it(
    control_plane: ControlPlane,
) -> None:
    agent_id = await _register(control_plane)
    recorder = control_plane.resources.hub.recorder

    recorder.record_state(agent_id, heartbeat(START, listener_ok=False))

    assert recorder.pending == 1
    agent = await _get(control_plane, f"/api/v1/agents/{agent_id}")
    site = await _get(control_plane, f"/api/v1/sites/{SITE}/health")
    assert agent["connected"] is True
    assert agent["health"]["status"] == "unhealthy"
    assert agent["health"]["report"]["listener_ok"] is False
    assert site["status"] == "unhealthy"
    assert site["agents"][0]["connected"] is True


async def test_disconnect_shows_as_not_connected_at_once(control_plane: ControlPlane) -> None:
    agent_id = await _register(control_plane)
    recorder = control_plane.resources.hub.recorder
    recorder.record_state(agent_id, heartbeat(START))
    before = await _get(control_plane, f"/api/v1/sites/{SITE}/agents")

    disconnected = heartbeat(START)
    recorder.record_state(
        agent_id,
        LinkState(**{**disconnected.columns(), "connected": False, "disconnected_at": START}),
    )

    after = await _get(control_plane, f"/api/v1/sites/{SITE}/agents")
    assert before["items"][0]["connected"] is True
    assert after["items"][0]["connected"] is False
    assert after["items"][0]["health"]["disconnected_at"] is not None


async def test_agent_turns_missing_as_the_clock_passes_three_silent_intervals(
    control_plane: ControlPlane, clock: ManualClock
) -> None:
    agent_id = await _register(control_plane)
    control_plane.resources.hub.recorder.record_state(agent_id, heartbeat(START))
    path = f"/api/v1/agents/{agent_id}"

    answers = []
    for seconds in (0, 30, 1, 1):
        clock.advance(dt.timedelta(seconds=seconds))
        answers.append(await _get(control_plane, path))
    site = await _get(control_plane, f"/api/v1/sites/{SITE}/health")
    fleet = await _get(control_plane, "/api/v1/fleet/health")

    assert [answer["health"]["status"] for answer in answers] == ["ok", "ok", "missing", "missing"]
    assert [answer["connected"] for answer in answers] == [True, True, False, False]
    # While missing, the reason follows the clock rather than the first answer that said so.
    assert answers[2]["health"]["reasons"] == ["no heartbeat for 31s (expected every 10s)"]
    assert answers[3]["health"]["reasons"] == ["no heartbeat for 32s (expected every 10s)"]
    assert site["status"] == "missing"
    assert site["reasons"] == ["edge-1: no heartbeat for 32s (expected every 10s)"]
    assert fleet["agents"]["missing"] == 1
    assert fleet["attention"][0]["reasons"] == site["reasons"]


async def test_new_agent_and_new_revision_show_at_once(control_plane: ControlPlane) -> None:
    first = await _register(control_plane, "edge-1")
    await _get(control_plane, f"/api/v1/sites/{SITE}/health")

    second = await _register(control_plane, "edge-0")
    stored = await control_plane.admin.put(
        f"/api/v1/sites/{SITE}/config", content=json.dumps({"dicom": {"port": 2000}})
    )

    site = await _get(control_plane, f"/api/v1/sites/{SITE}/health")
    assert [agent["id"] for agent in site["agents"]] == [str(second), str(first)]
    assert site["config_revision"] == stored.json()["revision"] == 1


async def test_answers_are_the_models_built_from_the_stored_records(
    control_plane: ControlPlane, clock: ManualClock
) -> None:
    ids = [await _register(control_plane, name) for name in ("edge-1", "edge-2", "edge-3")]
    recorder = control_plane.resources.hub.recorder
    recorder.record_state(ids[0], heartbeat(START))
    recorder.record_state(ids[1], heartbeat(START, listener_ok=False))
    await recorder.flush()
    clock.advance(dt.timedelta(seconds=5))
    context = HealthContext(now=clock.now, heartbeat_interval=dt.timedelta(seconds=HEARTBEAT_S))
    async with control_plane.session() as session:
        rows = await session.execute(select_records().order_by(Agent.name))
        records = [record_of(row) for row in rows]

    listed = await control_plane.admin.get(f"/api/v1/sites/{SITE}/agents")
    one = await control_plane.admin.get(f"/api/v1/agents/{ids[1]}")
    site = await _get(control_plane, f"/api/v1/sites/{SITE}/health")

    public = [
        agent_public(
            record, SITE, verdict(record, context), connected=is_connected(record, context)
        )
        for record in records
    ]
    assert listed.headers["content-type"] == "application/json"
    assert listed.content == ItemList[AgentPublic](items=public).model_dump_json().encode()
    assert one.content == public[1].model_dump_json().encode()
    summaries = [
        agent_summary(
            record, verdict(record, context), connected=is_connected(record, context)
        ).model_dump(mode="json")
        for record in records
    ]
    assert site["agents"] == summaries
    assert site["status"] == "missing"
    assert site["reasons"] == [
        "edge-2: the DICOM listener is down: no images can be received",
        "edge-3: has never connected",
    ]


async def test_site_and_agent_created_through_another_replica_are_found_at_once(
    control_plane: ControlPlane, settings: ControlPlaneSettings
) -> None:
    async with started_control_plane(settings) as replica:
        await replica.register_agent(site="hospital-b", name="edge-9")
        await replica.register_agent(site="hospital-c", name="edge-8")
        in_b = (await _get(replica, "/api/v1/sites/hospital-b/agents"))["items"][0]["id"]
        in_c = (await _get(replica, "/api/v1/sites/hospital-c/agents"))["items"][0]["id"]

    agent = await _get(control_plane, f"/api/v1/agents/{in_b}")
    site = await _get(control_plane, "/api/v1/sites/hospital-c/health")

    assert (agent["site"], agent["name"]) == ("hospital-b", "edge-9")
    assert [entry["id"] for entry in site["agents"]] == [in_c]


async def test_unknown_site_and_agent_are_404(control_plane: ControlPlane) -> None:
    site = await control_plane.admin.get("/api/v1/sites/nowhere/agents")
    agent = await control_plane.admin.get(f"/api/v1/agents/{uuid.uuid4()}")

    assert (site.status_code, agent.status_code) == (404, 404)


async def test_resync_brings_what_another_replica_changed(
    control_plane: ControlPlane, settings: ControlPlaneSettings
) -> None:
    agent_id = await _register(control_plane, "edge-1")
    before = await _get(control_plane, "/api/v1/fleet/health")
    async with started_control_plane(settings) as replica:
        await replica.register_agent(site="hospital-b", name="edge-9")
        # The agent's link is held by the other replica, which writes its state.
        replica.resources.hub.recorder.record_state(agent_id, heartbeat(START))
        await replica.resources.hub.recorder.flush()
        await replica.admin.put(
            f"/api/v1/sites/{SITE}/config", content=json.dumps({"dicom": {"port": 2000}})
        )

    unchanged = await _get(control_plane, "/api/v1/fleet/health")
    await control_plane.resources.hub.view.resync()
    after = await _get(control_plane, "/api/v1/fleet/health")
    site = await _get(control_plane, f"/api/v1/sites/{SITE}/health")

    assert unchanged == before
    assert before["sites"]["missing"] == 1
    assert after["sites"] == {"ok": 1, "degraded": 0, "unhealthy": 0, "missing": 1}
    assert after["agents"] == {"ok": 1, "degraded": 0, "unhealthy": 0, "missing": 1}
    assert site["config_revision"] == 1
    assert site["agents"][0]["connected"] is True


async def test_resync_keeps_a_link_state_newer_than_the_stored_one(
    control_plane: ControlPlane, clock: ManualClock
) -> None:
    agent_id = await _register(control_plane)
    recorder = control_plane.resources.hub.recorder
    recorder.record_state(agent_id, heartbeat(START))
    await recorder.flush()
    later = START + dt.timedelta(seconds=HEARTBEAT_S)
    clock.advance(dt.timedelta(seconds=HEARTBEAT_S))
    # Recorded, not written yet: the database holds the older state.
    recorder.record_state(agent_id, heartbeat(later, listener_ok=False))

    await control_plane.resources.hub.view.resync()

    agent = await _get(control_plane, f"/api/v1/agents/{agent_id}")
    assert agent["health"]["status"] == "unhealthy"
    assert agent["health"]["last_seen_at"] == later.isoformat().replace("+00:00", "Z")


async def test_token_revoked_behind_this_process_shows_at_resync(
    control_plane: ControlPlane,
) -> None:
    agent_id = await _register(control_plane)
    control_plane.resources.hub.recorder.record_state(agent_id, heartbeat(START))
    async with control_plane.session() as session:
        await session.execute(update(Agent).where(Agent.id == agent_id).values(token_sha256=None))
        await session.commit()

    await control_plane.resources.hub.view.resync()

    agent = await _get(control_plane, f"/api/v1/agents/{agent_id}")
    assert agent["health"]["status"] == "missing"
    assert any("token is revoked" in reason for reason in agent["health"]["reasons"])
    # The link's state (not yet written) was kept.
    assert agent["connected"] is True


async def test_token_revoked_through_the_api_shows_at_once(control_plane: ControlPlane) -> None:
    agent_id = await _register(control_plane)
    control_plane.resources.hub.recorder.record_state(agent_id, heartbeat(START))
    await _get(control_plane, f"/api/v1/agents/{agent_id}")

    await control_plane.admin.delete(f"/api/v1/agents/{agent_id}/token")

    agent = await _get(control_plane, f"/api/v1/agents/{agent_id}")
    assert any("token is revoked" in reason for reason in agent["health"]["reasons"])


async def test_state_recorded_before_the_view_knew_the_agent_is_kept(
    control_plane: ControlPlane, settings: ControlPlaneSettings
) -> None:
    async with started_control_plane(settings) as replica:
        await replica.register_agent(site=SITE, name="edge-9")
        created = await _get(replica, f"/api/v1/sites/{SITE}/agents")
    agent_id = uuid.UUID(created["items"][0]["id"])
    # The agent, registered elsewhere, connects here before this view's next resync.
    control_plane.resources.hub.recorder.record_state(agent_id, heartbeat(START))

    agent = await _get(control_plane, f"/api/v1/agents/{agent_id}")

    assert agent["connected"] is True
    assert agent["health"]["status"] == "ok"


async def test_site_verdict_names_each_agent_in_order() -> None:
    judged = site_verdict(
        [
            ("edge-1", Verdict(status=AgentStatus.ok, reasons=())),
            ("edge-2", Verdict(status=AgentStatus.degraded, reasons=("slow", "full"))),
        ]
    )

    assert judged == Verdict(status=AgentStatus.degraded, reasons=("edge-2: slow", "edge-2: full"))
    assert site_verdict([]).status is AgentStatus.missing


async def test_write_read_back_failing_is_left_to_the_resync_but_a_lookup_fails() -> None:
    # A port nobody listens on: the connection is refused at once.
    engine = create_engine(f"postgresql://127.0.0.1:{free_port()}/nowhere")
    context = HealthContext(now=START, heartbeat_interval=dt.timedelta(seconds=HEARTBEAT_S))
    view = FleetView(create_sessionmaker(engine), ManualClock(START), context.heartbeat_interval)
    try:
        await view.reload_agents([uuid.uuid4()])
        await view.reload_site(SITE)

        with pytest.raises(OperationalError):
            await view.agent_json(uuid.uuid4(), context)
    finally:
        await engine.dispose()
