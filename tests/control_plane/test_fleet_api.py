"""Fleet routes that need no agent link: tokens over HTTP, site and fleet health, history."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from common.messages import HealthReport
from control_plane.fleet.health_rules import AgentStatus, Verdict
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.harness import ADMIN_TOKEN, ControlPlane

HISTORY_PER_AGENT = 3


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> ControlPlaneSettings:
    """The control plane under test, keeping a short health history."""
    return ControlPlaneSettings(
        database_url=database_url,
        blob_dir=tmp_path / "blobs",
        admin_token=ADMIN_TOKEN,
        health_history_per_agent=HISTORY_PER_AGENT,
    )


async def _agent(control_plane: ControlPlane, site: str = "hospital-a") -> tuple[str, str]:
    token = await control_plane.register_agent(site=site)
    agents = (await control_plane.admin.get(f"/api/v1/sites/{site}/agents")).json()["items"]
    agent_id: str = agents[0]["id"]
    return agent_id, token


async def test_rotated_token_works_for_the_agent_and_the_old_one_no_longer_does(
    control_plane: ControlPlane,
) -> None:
    agent_id, old_token = await _agent(control_plane)

    rotated = await control_plane.admin.post(f"/api/v1/agents/{agent_id}/token")

    assert rotated.status_code == 200
    new_token = rotated.json()["token"]
    async with control_plane.client(old_token) as old, control_plane.client(new_token) as new:
        assert (await old.get("/api/v1/agent/config")).status_code == 401
        assert (await new.get("/api/v1/agent/config")).status_code == 200


async def test_revoked_token_is_refused_until_a_rotation_issues_a_new_one(
    control_plane: ControlPlane,
) -> None:
    agent_id, token = await _agent(control_plane)

    revoked = await control_plane.admin.delete(f"/api/v1/agents/{agent_id}/token")

    assert revoked.status_code == 204
    async with control_plane.client(token) as agent:
        assert (await agent.get("/api/v1/agent/config")).status_code == 401
    fresh = (await control_plane.admin.post(f"/api/v1/agents/{agent_id}/token")).json()["token"]
    async with control_plane.client(fresh) as agent:
        assert (await agent.get("/api/v1/agent/config")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/agents/{id}/token"),
        ("DELETE", "/api/v1/agents/{id}/token"),
        ("GET", "/api/v1/agents/{id}/health/history"),
    ],
)
async def test_token_and_history_routes_of_an_unknown_agent_are_404(
    control_plane: ControlPlane, method: str, path: str
) -> None:
    response = await control_plane.admin.request(method, path.format(id=uuid.uuid4()))

    assert response.status_code == 404


async def test_agents_cannot_manage_tokens_or_read_fleet_health(
    control_plane: ControlPlane,
) -> None:
    agent_id, token = await _agent(control_plane)

    async with control_plane.client(token) as agent:
        for method, path in (
            ("POST", f"/api/v1/agents/{agent_id}/token"),
            ("DELETE", f"/api/v1/agents/{agent_id}/token"),
            ("GET", "/api/v1/fleet/health"),
            ("GET", "/api/v1/sites/hospital-a/health"),
        ):
            assert (await agent.request(method, path)).status_code == 403, path


async def test_site_without_agents_is_missing_and_needs_attention(
    control_plane: ControlPlane,
) -> None:
    await control_plane.admin.post("/api/v1/sites", json={"name": "empty", "timezone": "UTC"})

    site = (await control_plane.admin.get("/api/v1/sites/empty/health")).json()
    fleet = (await control_plane.admin.get("/api/v1/fleet/health")).json()

    assert site == {
        "site": "empty",
        "status": "missing",
        "reasons": ["no agent is registered for this site"],
        "config_revision": 0,
        "agents": [],
    }
    assert fleet["attention"] == [
        {"site": "empty", "status": "missing", "reasons": ["no agent is registered for this site"]}
    ]


async def test_fleet_counts_sites_and_agents_per_status(control_plane: ControlPlane) -> None:
    await _agent(control_plane, "hospital-a")
    await _agent(control_plane, "hospital-b")

    fleet = (await control_plane.admin.get("/api/v1/fleet/health")).json()

    assert fleet["status"] == "missing"
    assert fleet["sites"] == {"ok": 0, "degraded": 0, "unhealthy": 0, "missing": 2}
    assert fleet["agents"] == {"ok": 0, "degraded": 0, "unhealthy": 0, "missing": 2}
    assert [entry["site"] for entry in fleet["attention"]] == ["hospital-a", "hospital-b"]
    assert fleet["attention"][0]["reasons"] == ["agent-1: has never connected"]


async def test_empty_fleet_is_ok(control_plane: ControlPlane) -> None:
    fleet = (await control_plane.admin.get("/api/v1/fleet/health")).json()

    assert fleet["status"] == "ok"
    assert fleet["attention"] == []


async def test_health_of_an_unknown_site_is_404(control_plane: ControlPlane) -> None:
    response = await control_plane.admin.get("/api/v1/sites/nowhere/health")

    assert response.status_code == 404


async def test_agent_without_reports_has_an_empty_history(control_plane: ControlPlane) -> None:
    agent_id, _ = await _agent(control_plane)

    history = await control_plane.admin.get(f"/api/v1/agents/{agent_id}/health/history")

    assert history.json() == {"items": []}


@pytest.mark.parametrize("limit", [0, 1001])
async def test_history_limit_outside_1_to_1000_is_422(
    control_plane: ControlPlane, limit: int
) -> None:
    agent_id, _ = await _agent(control_plane)

    response = await control_plane.admin.get(
        f"/api/v1/agents/{agent_id}/health/history", params={"limit": limit}
    )

    assert response.status_code == 422


async def test_command_with_a_malformed_name_is_422(control_plane: ControlPlane) -> None:
    agent_id, _ = await _agent(control_plane)

    response = await control_plane.admin.post(
        f"/api/v1/agents/{agent_id}/commands", json={"name": "Rm -rf"}
    )

    assert response.status_code == 422


async def test_history_is_pruned_to_the_newest_reports_of_each_agent(
    control_plane: ControlPlane,
) -> None:
    agent_id, _ = await _agent(control_plane)
    recorder = control_plane.resources.hub.recorder
    start = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    for depth in range(6):
        report = HealthReport.model_validate(
            {
                "listener_ok": True,
                "uploads_open": True,
                "last_query_duration_s": None,
                "longest_reap_s": None,
                "spool_depth": depth,
                "spool_bytes": 0,
                "deferred_uploads": 0,
                "failed_instances": 0,
                "uploads_succeeded": 0,
                "uploads_failed": 0,
                "oldest_unuploaded_age_s": None,
                "disk_free_bytes": 10**12,
                "disk_total_bytes": None,
                "disk_reserve_bytes": 0,
                "last_error": None,
                "last_error_at": None,
            }
        )
        recorder.record_report(
            uuid.UUID(agent_id),
            start + dt.timedelta(seconds=10 * depth),
            Verdict(status=AgentStatus.ok, reasons=()),
            report.model_dump(mode="json"),
        )
    await recorder.flush()

    await recorder.prune_history()

    history = await control_plane.admin.get(f"/api/v1/agents/{agent_id}/health/history")
    assert [entry["report"]["spool_depth"] for entry in history.json()["items"]] == [5, 4, 3]
