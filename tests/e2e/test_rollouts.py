"""Rollouts end to end: real `dicom-connector control-plane` processes and real `dicom-connector
agent` processes over real websockets, on PostgreSQL (a fresh database per test), the fleet's
production database; a control plane restarted mid-rollout also on SQLite. (Each test starts
four processes, seconds of CPU on a suite that keeps the cores busy; the rollout driver runs on
both databases in tests/control_plane/test_rollouts_api.py.)

Three sites with one agent each; stages [30, 60, 100] put one site in each stage. The agent
that rejects a config is a real rejection: its listener follows `dicom.port` (the others listen
on a port of their own whatever the config says), and the rollout moves it to a port that is
taken, so its new listener cannot start and it answers `config_result` failed.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.support.dicom_factory import make_instance
from tests.support.environment import free_port
from tests.support.fleet_processes import ControlPlaneProcess, Process, start_agent
from tests.support.postgres import on_databases, temporary_database
from tests.support.scu import send_datasets

ADMIN_TOKEN = "e2e-rollouts-admin-token-0123456789"
SITES = ("site-a", "site-b", "site-c")
STAGES = [30, 60, 100]
FAST = {"timing": {"acquisition_delay": "0.5s"}}
CONTROL_PLANE_ENV = {
    "DICOM_CONNECTOR_HEARTBEAT_INTERVAL_S": "2",
    "DICOM_CONNECTOR_FLEET_FLUSH_INTERVAL_S": "0.1",
    "DICOM_CONNECTOR_FLEET_RECONCILE_INTERVAL_S": "0.5",
    "DICOM_CONNECTOR_ROLLOUT_TICK_INTERVAL_S": "0.2",
    "DICOM_CONNECTOR_ROLLOUT_LEASE_S": "3",
    "DICOM_CONNECTOR_ROLLOUT_RECONNECT_GRACE_S": "20",
}


@dataclass
class SiteAgent:
    """The one agent of a site: its id, process and DICOM port."""

    agent_id: str
    process: Process
    port: int


@dataclass
class World:
    """The control plane(s), the agents by site, and what tests need to start more."""

    control_plane: ControlPlaneProcess
    agents: dict[str, SiteAgent]
    root: Path
    stack: ExitStack
    database_url: str


ON_POSTGRESQL = on_databases("database_url", sqlite=False)
ON_BOTH = on_databases("database_url", sqlite=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'control-plane.db'}"
        return
    with temporary_database() as url:
        yield url


def _control_plane(url: str, root: Path, stack: ExitStack) -> ControlPlaneProcess:
    control_plane = ControlPlaneProcess(url, root, stack, ADMIN_TOKEN, CONTROL_PLANE_ENV)
    control_plane.start()
    return control_plane


def _build(
    control_plane: ControlPlaneProcess,
    root: Path,
    stack: ExitStack,
    *,
    agents_link_to: str | None = None,
    follows_config_port: str | None = None,
) -> dict[str, SiteAgent]:
    """Three sites with one running agent each (linked to `agents_link_to`, else to
    `control_plane`); the agent of `follows_config_port` listens on the config's port."""
    agents: dict[str, SiteAgent] = {}
    for site in SITES:
        control_plane.call("POST", "/api/v1/sites", json={"name": site, "timezone": "UTC"})
        port = free_port()
        config: dict[str, Any] = dict(FAST)
        if site == follows_config_port:
            config = FAST | {"dicom": {"port": port}}
        control_plane.call("PUT", f"/api/v1/sites/{site}/config", json=config)
        created = control_plane.call(
            "POST",
            f"/api/v1/sites/{site}/agents",
            json={"name": f"edge-{site[-1]}", "deployment": "edge"},
        )
        process = start_agent(
            agents_link_to or control_plane.url,
            created["token"],
            root / site,
            stack,
            dicom_port=None if site == follows_config_port else port,
        )
        agents[site] = SiteAgent(created["id"], process, port)
    for agent in agents.values():
        control_plane.eventually(
            f"/api/v1/agents/{agent.agent_id}",
            lambda answer: answer["connected"] and answer["config_revision"] == 1,
        )
    return agents


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[World]:
    with ExitStack() as stack:
        control_plane = _control_plane(database_url, tmp_path, stack)
        agents = _build(control_plane, tmp_path, stack, follows_config_port="site-b")
        yield World(control_plane, agents, tmp_path, stack, database_url)


def _create(control_plane: ControlPlaneProcess, **body: Any) -> str:
    created = control_plane.call("POST", "/api/v1/rollouts", json={"stages": STAGES, **body})
    assert created["state"] == "running"
    rollout_id: str = created["id"]
    return rollout_id


def _ended(control_plane: ControlPlaneProcess, rollout_id: str, state: str) -> dict[str, Any]:
    answer: dict[str, Any] = control_plane.eventually(
        f"/api/v1/rollouts/{rollout_id}",
        lambda r: (
            r["state"] in ("completed", "rolled_back", "aborted") and not r["rollback_pending"]
        ),
    )
    assert answer["state"] == state, answer["reason"]
    return answer


def _revisions(control_plane: ControlPlaneProcess, site: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = control_plane.call(
        "GET", f"/api/v1/sites/{site}/config/revisions"
    )["items"]
    return items


def _agent_runs(control_plane: ControlPlaneProcess, agent: SiteAgent, revision: int) -> None:
    control_plane.eventually(
        f"/api/v1/agents/{agent.agent_id}",
        lambda answer: answer["config_revision"] == revision,
    )


@ON_POSTGRESQL
def test_an_agent_rejecting_the_config_in_stage_two_rolls_back_exactly_the_touched_sites(
    world: World,
) -> None:
    cp = world.control_plane
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        rollout_id = _create(cp, sites="all", config={"dicom": {"port": busy_port}}, soak="1s")

        done = _ended(cp, rollout_id, "rolled_back")

    reason = done["reason"]
    assert (reason["what"], reason["site"], reason["agent"]) == ("rejected", "site-b", "edge-b")
    assert reason["agent_id"] == world.agents["site-b"].agent_id
    assert "revision 2" in reason["detail"]
    assert "cannot listen" in reason["detail"]
    assert [stage["status"] for stage in done["stages"]] == ["completed", "stopped", "stopped"]
    by_site = {site["site"]: site for site in done["sites"]}
    for site in ("site-a", "site-b"):
        assert by_site[site]["status"] == "rolled_back"
        assert (by_site[site]["previous_revision"], by_site[site]["revision"]) == (1, 2)
        assert by_site[site]["rollback_revision"] == 3
        first, applied, rolled_back = _revisions(cp, site)
        assert (applied["rollout_id"], applied["rollout_action"]) == (rollout_id, "apply")
        assert (rolled_back["rollout_id"], rolled_back["rollout_action"]) == (
            rollout_id,
            "rollback",
        )
        assert rolled_back["config"] == first["config"]
        _agent_runs(cp, world.agents[site], 3)
    assert by_site["site-c"]["status"] == "pending"
    assert len(_revisions(cp, "site-c")) == 1
    _agent_runs(cp, world.agents["site-c"], 1)


@ON_POSTGRESQL
def test_a_good_rollout_completes_with_every_agent_on_the_new_revision(world: World) -> None:
    cp = world.control_plane
    rollout_id = _create(cp, sites="all", config={"dicom": {"ae_title": "ROLLED"}}, soak="1s")

    done = _ended(cp, rollout_id, "completed")

    assert [stage["sites"] for stage in done["stages"]] == [[site] for site in SITES]
    assert [stage["status"] for stage in done["stages"]] == ["completed"] * 3
    for site in done["sites"]:
        assert site["revision"] == 2
        assert [(agent["applied"], agent["config_revision"]) for agent in site["agents"]] == [
            (True, 2)
        ]
    instance = make_instance(
        patient_id="SYNTH-ROLLOUT",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        series_description="T1",
        study_description="Synthetic",
        patient_comments=None,
    )
    assert send_datasets(world.agents["site-a"].port, [instance], called_ae="ROLLED") == [0]


@ON_POSTGRESQL
def test_pause_holds_the_next_stage_resume_goes_on_and_abort_rolls_back(
    world: World,
) -> None:
    cp = world.control_plane
    rollout_id = _create(cp, sites="all", config={"timing": {"sleep_time": "2m"}}, soak="60s")
    soaking = cp.eventually(
        f"/api/v1/rollouts/{rollout_id}", lambda r: r["stages"][0]["status"] == "soaking"
    )

    paused = cp.call("POST", f"/api/v1/rollouts/{rollout_id}/pause")
    resumed = cp.call("POST", f"/api/v1/rollouts/{rollout_id}/resume")

    assert paused["state"] == "paused"
    assert resumed["state"] == "running"
    # Resuming restarts the soak of the stage that was soaking.
    assert resumed["stages"][0]["soak_started_at"] > soaking["stages"][0]["soak_started_at"]
    assert resumed["stages"][1]["status"] == "pending"
    aborted = cp.call("POST", f"/api/v1/rollouts/{rollout_id}/abort")
    assert aborted["state"] == "aborted"
    done = _ended(cp, rollout_id, "aborted")
    assert done["reason"]["what"] == "aborted"
    statuses = {site["site"]: site["status"] for site in done["sites"]}
    assert statuses == {"site-a": "rolled_back", "site-b": "pending", "site-c": "pending"}
    _agent_runs(cp, world.agents["site-a"], 3)
    assert len(_revisions(cp, "site-b")) == 1


@ON_BOTH
def test_a_restarted_control_plane_resumes_the_rollout_it_was_driving(world: World) -> None:
    cp = world.control_plane
    rollout_id = _create(cp, sites="all", config={"timing": {"sleep_time": "3m"}}, soak="3s")
    before = cp.eventually(
        f"/api/v1/rollouts/{rollout_id}", lambda r: r["stages"][1]["status"] == "soaking"
    )

    assert cp.process is not None
    cp.process.stop()
    cp.start()
    done = _ended(cp, rollout_id, "completed")

    assert done["driver"]["id"] != before["driver"]["id"]
    for site in SITES:
        _agent_runs(cp, world.agents[site], 2)


@pytest.mark.postgres
def test_killing_the_replica_that_drives_a_rollout_lets_the_other_finish_it(
    tmp_path: Path,
) -> None:
    with temporary_database() as url, ExitStack() as stack:
        driving = _control_plane(url, tmp_path / "one", stack)
        other = _control_plane(url, tmp_path / "two", stack)
        # The agents are linked to the replica that survives; the other one drives.
        agents = _build(driving, tmp_path, stack, agents_link_to=other.url)
        rollout_id = _create(
            driving, sites="all", config={"timing": {"sleep_time": "3m"}}, soak="3s"
        )
        before = other.eventually(
            f"/api/v1/rollouts/{rollout_id}", lambda r: r["stages"][1]["status"] == "soaking"
        )

        assert driving.process is not None
        driving.process.kill()
        done = _ended(other, rollout_id, "completed")

        assert done["driver"]["id"] != before["driver"]["id"]
        for site in SITES:
            _agent_runs(other, agents[site], 2)
