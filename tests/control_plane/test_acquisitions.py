"""Finding data: acquisition filters and file download."""

from __future__ import annotations

import uuid

import pytest

from control_plane.hierarchy.blobs import BlobStore
from tests.control_plane.harness import ControlPlane, post_ingest
from tests.control_plane.instances import new_uid, part10


@pytest.fixture
async def stored(control_plane: ControlPlane) -> dict[str, bytes]:
    """Four instances across groups, projects, subjects and sessions; returns bytes by SOP UID."""
    for group_id, project in (("neuro", "study-a"), ("neuro", "study-b"), ("cardio", "study-a")):
        await control_plane.admin.post("/api/v1/groups", json={"id": group_id, "label": group_id})
        await control_plane.admin.post(
            f"/api/v1/groups/{group_id}/projects", json={"label": project}
        )
    placements = [
        ("neuro", "study-a", "SUBJ-1", "SESSION-1"),
        ("neuro", "study-a", "SUBJ-2", "SESSION-1"),
        ("neuro", "study-b", "SUBJ-1", "SESSION-2"),
        ("cardio", "study-a", "SUBJ-1", "SESSION-1"),
    ]
    bodies: dict[str, bytes] = {}
    for group_id, project, subject, session in placements:
        sop = new_uid()
        bodies[sop] = part10(sop)
        response = await post_ingest(
            control_plane.admin,
            bodies[sop],
            sop_instance_uid=sop,
            series_instance_uid=new_uid(),
            group=group_id,
            project=project,
            subject=subject,
            session=session,
        )
        assert response.status_code == 200, response.text
    return bodies


async def _where(control_plane: ControlPlane, **filters: str) -> list[tuple[str, ...]]:
    response = await control_plane.admin.get("/api/v1/acquisitions", params=filters)
    assert response.status_code == 200
    return [
        (item["group"], item["project"], item["subject"], item["session"])
        for item in response.json()["items"]
    ]


async def test_acquisitions_without_filters_lists_everything_in_hierarchy_order(
    control_plane: ControlPlane, stored: dict[str, bytes]
) -> None:
    assert await _where(control_plane) == [
        ("cardio", "study-a", "SUBJ-1", "SESSION-1"),
        ("neuro", "study-a", "SUBJ-1", "SESSION-1"),
        ("neuro", "study-a", "SUBJ-2", "SESSION-1"),
        ("neuro", "study-b", "SUBJ-1", "SESSION-2"),
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"group": "cardio"}, [("cardio", "study-a", "SUBJ-1", "SESSION-1")]),
        (
            {"project": "study-a"},
            [
                ("cardio", "study-a", "SUBJ-1", "SESSION-1"),
                ("neuro", "study-a", "SUBJ-1", "SESSION-1"),
                ("neuro", "study-a", "SUBJ-2", "SESSION-1"),
            ],
        ),
        (
            {"group": "neuro", "subject": "SUBJ-1"},
            [
                ("neuro", "study-a", "SUBJ-1", "SESSION-1"),
                ("neuro", "study-b", "SUBJ-1", "SESSION-2"),
            ],
        ),
        ({"session": "SESSION-2"}, [("neuro", "study-b", "SUBJ-1", "SESSION-2")]),
        ({"group": "neuro", "project": "study-c"}, []),
    ],
)
async def test_acquisition_filters_combine(
    control_plane: ControlPlane,
    stored: dict[str, bytes],
    filters: dict[str, str],
    expected: list[tuple[str, ...]],
) -> None:
    assert await _where(control_plane, **filters) == expected


async def test_downloaded_file_is_byte_identical_to_the_ingested_one(
    control_plane: ControlPlane, stored: dict[str, bytes]
) -> None:
    items = (await control_plane.admin.get("/api/v1/acquisitions")).json()["items"]
    for item in items:
        [file] = item["files"]
        response = await control_plane.admin.get(f"/api/v1/files/{file['id']}")

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/dicom"
        assert response.content == stored[file["sop_instance_uid"]]


async def test_unknown_file_is_404(control_plane: ControlPlane) -> None:
    response = await control_plane.admin.get(f"/api/v1/files/{uuid.uuid4()}")

    assert response.status_code == 404


async def test_file_whose_blob_vanished_is_an_explicit_500(
    control_plane: ControlPlane, stored: dict[str, bytes]
) -> None:
    item = (await control_plane.admin.get("/api/v1/acquisitions")).json()["items"][0]
    [file] = item["files"]
    assert control_plane.settings.blob_dir is not None
    (control_plane.settings.blob_dir / BlobStore.key_of(file["sha256"])).unlink()

    response = await control_plane.admin.get(f"/api/v1/files/{file['id']}")

    assert response.status_code == 500
    assert "missing from the blob store" in response.json()["detail"]
