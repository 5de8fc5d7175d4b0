"""Groups and projects: creation, listing, conflicts and validation."""

from __future__ import annotations

import pytest

from tests.control_plane.harness import ControlPlane


async def test_created_groups_are_listed_by_id(control_plane: ControlPlane) -> None:
    for group_id, label in (("neuro", "Neuroscience"), ("cardio", "Cardiology")):
        response = await control_plane.admin.post(
            "/api/v1/groups", json={"id": group_id, "label": label}
        )
        assert response.status_code == 201
        assert response.json() == {"id": group_id, "label": label}

    listed = await control_plane.admin.get("/api/v1/groups")

    assert listed.json() == {
        "items": [
            {"id": "cardio", "label": "Cardiology"},
            {"id": "neuro", "label": "Neuroscience"},
        ]
    }


async def test_creating_an_existing_group_is_409(control_plane: ControlPlane) -> None:
    await control_plane.admin.post("/api/v1/groups", json={"id": "neuro", "label": "A"})

    response = await control_plane.admin.post("/api/v1/groups", json={"id": "neuro", "label": "B"})

    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


@pytest.mark.parametrize("group_id", ["Neuro", "-neuro", "neuro/x", "", "n" * 65, "neuro lab"])
async def test_group_id_outside_the_grammar_is_422(
    control_plane: ControlPlane, group_id: str
) -> None:
    response = await control_plane.admin.post(
        "/api/v1/groups", json={"id": group_id, "label": "Neuro"}
    )

    assert response.status_code == 422
    assert "group id" in response.text


async def test_created_projects_are_listed_by_label(control_plane: ControlPlane) -> None:
    await control_plane.admin.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
    for label in ("study-b", "study-a"):
        response = await control_plane.admin.post(
            "/api/v1/groups/neuro/projects", json={"label": label}
        )
        assert response.status_code == 201
        assert response.json()["group"] == "neuro"
        assert response.json()["label"] == label

    listed = await control_plane.admin.get("/api/v1/groups/neuro/projects")

    assert [project["label"] for project in listed.json()["items"]] == ["study-a", "study-b"]


async def test_creating_an_existing_project_in_the_group_is_409(
    control_plane: ControlPlane,
) -> None:
    await control_plane.admin.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
    await control_plane.admin.post("/api/v1/groups/neuro/projects", json={"label": "study-a"})

    response = await control_plane.admin.post(
        "/api/v1/groups/neuro/projects", json={"label": "study-a"}
    )

    assert response.status_code == 409


async def test_same_project_label_in_two_groups_is_allowed(control_plane: ControlPlane) -> None:
    for group_id in ("neuro", "cardio"):
        await control_plane.admin.post("/api/v1/groups", json={"id": group_id, "label": group_id})
        response = await control_plane.admin.post(
            f"/api/v1/groups/{group_id}/projects", json={"label": "pilot"}
        )
        assert response.status_code == 201


async def test_project_in_an_unknown_group_is_404(control_plane: ControlPlane) -> None:
    created = await control_plane.admin.post(
        "/api/v1/groups/nobody/projects", json={"label": "study-a"}
    )
    listed = await control_plane.admin.get("/api/v1/groups/nobody/projects")

    assert created.status_code == 404
    assert listed.status_code == 404
    assert "POST /api/v1/groups" in created.json()["detail"]


@pytest.mark.parametrize("label", ["a/b", "..", "", "tab\there"])
async def test_project_label_that_a_routing_string_cannot_name_is_422(
    control_plane: ControlPlane, label: str
) -> None:
    await control_plane.admin.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})

    response = await control_plane.admin.post(
        "/api/v1/groups/neuro/projects", json={"label": label}
    )

    assert response.status_code == 422
