"""Destinations in a site's config: checked when the config is saved, never first on the agent."""

from __future__ import annotations

import json

import pytest

from tests.control_plane.harness import ControlPlane


@pytest.fixture
async def site(control_plane: ControlPlane) -> str:
    """A site named `hospital-d`."""
    response = await control_plane.admin.post(
        "/api/v1/sites", json={"name": "hospital-d", "timezone": "UTC"}
    )
    assert response.status_code == 201
    return "hospital-d"


async def test_a_dicomweb_destination_without_a_url_is_422_naming_the_key(
    control_plane: ControlPlane,
    site: str,
) -> None:
    response = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config",
        content=json.dumps({"destination_by_group": {"neuro": {"kind": "dicomweb"}}}),
    )

    assert response.status_code == 422
    assert response.json()["detail"]["problems"] == [
        "destination_by_group.neuro.dicomweb.url: required key is missing"
    ]
    current = (await control_plane.admin.get(f"/api/v1/sites/{site}/config")).json()
    assert current["revision"] == 0


async def test_a_valid_destination_is_stored_with_its_kind(
    control_plane: ControlPlane,
    site: str,
) -> None:
    document = {
        "destination": {
            "kind": "flywheel",
            "url": "https://x.flywheel.io",
            "api_key_file": "/etc/dc/fw-key",
        },
        "destination_by_group": {"unknown": {"kind": "builtin"}},
    }
    saved = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config", content=json.dumps(document)
    )
    current = (await control_plane.admin.get(f"/api/v1/sites/{site}/config")).json()

    assert saved.status_code == 200
    assert current["config"]["destination"] == document["destination"]
    assert current["config"]["destination_by_group"] == {"unknown": {"kind": "builtin"}}
