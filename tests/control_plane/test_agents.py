"""Agent registration: one-time token stored hashed, listing and lookup."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import select

from control_plane.models import Agent
from tests.control_plane.harness import ControlPlane


async def _site(control_plane: ControlPlane, name: str = "hospital-a") -> str:
    await control_plane.admin.post("/api/v1/sites", json={"name": name, "timezone": "UTC"})
    return name


async def test_registered_agent_gets_an_id_and_a_token(control_plane: ControlPlane) -> None:
    site = await _site(control_plane)

    response = await control_plane.admin.post(
        f"/api/v1/sites/{site}/agents", json={"name": "edge-1", "deployment": "edge"}
    )

    assert response.status_code == 201
    answer = response.json()
    uuid.UUID(answer["id"])
    assert len(answer["token"]) >= 40


async def test_agent_shows_site_and_state_but_never_its_token(
    control_plane: ControlPlane,
) -> None:
    site = await _site(control_plane)
    created = (
        await control_plane.admin.post(
            f"/api/v1/sites/{site}/agents", json={"name": "pod-1", "deployment": "in-cluster"}
        )
    ).json()

    one = await control_plane.admin.get(f"/api/v1/agents/{created['id']}")
    listed = await control_plane.admin.get(f"/api/v1/sites/{site}/agents")

    expected = {
        "id": created["id"],
        "site": "hospital-a",
        "name": "pod-1",
        "deployment": "in-cluster",
        "connected": False,
        "config_revision": None,
        "health": {},
    }
    assert one.json() == expected
    assert listed.json() == {"items": [expected]}
    assert created["token"] not in one.text + listed.text


async def test_token_is_stored_only_as_its_sha256(control_plane: ControlPlane) -> None:
    site = await _site(control_plane)
    created = (
        await control_plane.admin.post(
            f"/api/v1/sites/{site}/agents", json={"name": "edge-1", "deployment": "edge"}
        )
    ).json()

    async with control_plane.session() as session:
        agent = await session.scalar(select(Agent).where(Agent.id == uuid.UUID(created["id"])))

    assert agent is not None
    assert agent.token_sha256 == hashlib.sha256(created["token"].encode()).hexdigest()
    stored_values = [str(getattr(agent, column.key)) for column in Agent.__table__.columns]
    assert created["token"] not in stored_values


async def test_two_agents_get_different_tokens(control_plane: ControlPlane) -> None:
    site = await _site(control_plane)
    tokens = [
        (
            await control_plane.admin.post(
                f"/api/v1/sites/{site}/agents", json={"name": name, "deployment": "edge"}
            )
        ).json()["token"]
        for name in ("edge-1", "edge-2")
    ]

    assert tokens[0] != tokens[1]


async def test_duplicate_agent_name_in_a_site_is_409(control_plane: ControlPlane) -> None:
    site = await _site(control_plane)
    body = {"name": "edge-1", "deployment": "edge"}
    await control_plane.admin.post(f"/api/v1/sites/{site}/agents", json=body)

    response = await control_plane.admin.post(f"/api/v1/sites/{site}/agents", json=body)

    assert response.status_code == 409


async def test_same_agent_name_in_two_sites_is_allowed(control_plane: ControlPlane) -> None:
    body = {"name": "edge-1", "deployment": "edge"}
    for name in ("hospital-a", "hospital-b"):
        site = await _site(control_plane, name)
        response = await control_plane.admin.post(f"/api/v1/sites/{site}/agents", json=body)
        assert response.status_code == 201


async def test_agent_in_an_unknown_site_is_404(control_plane: ControlPlane) -> None:
    response = await control_plane.admin.post(
        "/api/v1/sites/nowhere/agents", json={"name": "edge-1", "deployment": "edge"}
    )

    assert response.status_code == 404


async def test_unknown_deployment_is_422(control_plane: ControlPlane) -> None:
    site = await _site(control_plane)

    response = await control_plane.admin.post(
        f"/api/v1/sites/{site}/agents", json={"name": "edge-1", "deployment": "cloud"}
    )

    assert response.status_code == 422


async def test_unknown_agent_is_404(control_plane: ControlPlane) -> None:
    response = await control_plane.admin.get(f"/api/v1/agents/{uuid.uuid4()}")

    assert response.status_code == 404
