"""Every /api/v1 route needs a bearer token; agent tokens reach only the agent routes."""

from __future__ import annotations

import pytest

from tests.control_plane.harness import ControlPlane

ADMIN_ROUTES = [
    ("GET", "/api/v1/groups"),
    ("POST", "/api/v1/groups"),
    ("GET", "/api/v1/groups/neuro/projects"),
    ("POST", "/api/v1/groups/neuro/projects"),
    ("GET", "/api/v1/acquisitions"),
    ("GET", "/api/v1/files/00000000-0000-0000-0000-000000000000"),
    ("GET", "/api/v1/sites"),
    ("POST", "/api/v1/sites"),
    ("PUT", "/api/v1/sites/hospital-a/config"),
    ("GET", "/api/v1/sites/hospital-a/config"),
    ("GET", "/api/v1/sites/hospital-a/config/revisions"),
    ("POST", "/api/v1/sites/hospital-a/agents"),
    ("GET", "/api/v1/sites/hospital-a/agents"),
    ("GET", "/api/v1/agents/00000000-0000-0000-0000-000000000000"),
]
AGENT_ROUTES = [("GET", "/api/v1/agent/config"), ("POST", "/api/v1/ingest")]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES + AGENT_ROUTES)
async def test_api_route_without_token_is_401_with_bearer_challenge(
    control_plane: ControlPlane, method: str, path: str
) -> None:
    response = await control_plane.anonymous.request(method, path)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["detail"]


async def test_unknown_token_is_401(control_plane: ControlPlane) -> None:
    async with control_plane.client("not-a-token-anyone-issued") as stranger:
        response = await stranger.get("/api/v1/groups")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_non_bearer_authorization_is_401(control_plane: ControlPlane) -> None:
    response = await control_plane.anonymous.get(
        "/api/v1/groups", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}
    )

    assert response.status_code == 401


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_agent_token_on_an_admin_route_is_403(
    control_plane: ControlPlane, method: str, path: str
) -> None:
    token = await control_plane.register_agent()
    async with control_plane.client(token) as agent:
        response = await agent.request(method, path)

    assert response.status_code == 403
    assert "admin token" in response.json()["detail"]


async def test_agent_token_reads_its_own_site_config(control_plane: ControlPlane) -> None:
    token = await control_plane.register_agent(site="hospital-a")
    async with control_plane.client(token) as agent:
        response = await agent.get("/api/v1/agent/config")

    assert response.status_code == 200
    assert response.json()["site"] == "hospital-a"


async def test_admin_token_on_the_agent_config_route_is_403_with_the_admin_route(
    control_plane: ControlPlane,
) -> None:
    response = await control_plane.admin.get("/api/v1/agent/config")

    assert response.status_code == 403
    assert "/api/v1/sites/{site}/config" in response.json()["detail"]


async def test_healthz_needs_no_token(control_plane: ControlPlane) -> None:
    response = await control_plane.anonymous.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
