"""Fleet routes that need no agent link: tokens over HTTP, site and fleet health, history."""

from __future__ import annotations

import uuid

import pytest

from tests.control_plane.harness import ControlPlane


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
