"""Moving a misrouted session and purging one uploaded by mistake, through the API, with the
stored files and blobs checked behind it (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from typing import Any

from control_plane.hierarchy.blobs import BlobStore
from tests.control_plane.harness import ControlPlane, post_ingest
from tests.control_plane.instances import new_uid, part10, sha256_hex


async def _ingest(control_plane: ControlPlane, count: int, **where: str) -> list[bytes]:
    series = new_uid()
    bodies = []
    for _ in range(count):
        uid = new_uid()
        body = part10(uid, series_instance_uid=series)
        response = await post_ingest(
            control_plane.admin, body, sop_instance_uid=uid, series_instance_uid=series, **where
        )
        assert response.status_code == 200, response.text
        bodies.append(body)
    return bodies


async def _acquisitions(control_plane: ControlPlane, **filters: str) -> list[dict[str, Any]]:
    response = await control_plane.admin.get("/api/v1/acquisitions", params=filters)
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _project(control_plane: ControlPlane, group: str, *projects: str) -> None:
    await control_plane.admin.post("/api/v1/groups", json={"id": group, "label": group})
    for project in projects:
        await control_plane.admin.post(f"/api/v1/groups/{group}/projects", json={"label": project})


async def test_a_misrouted_session_moves_with_its_files_and_keeps_its_history(
    control_plane: ControlPlane,
) -> None:
    await _project(control_plane, "neuro", "study-a")
    bodies = await _ingest(control_plane, 2, subject="sub-1", session="ses-1")
    [acquisition] = await _acquisitions(control_plane, subject="sub-1")
    assert (acquisition["group"], acquisition["project"]) == ("unknown", "Unsorted")
    session_id = acquisition["session_id"]

    moved = await control_plane.admin.post(
        f"/api/v1/sessions/{session_id}/move", json={"group": "neuro", "project": "study-a"}
    )

    assert moved.status_code == 200, moved.text
    answer = moved.json()
    assert (answer["group"], answer["project"], answer["subject"], answer["session"]) == (
        "neuro",
        "study-a",
        "sub-1",
        "ses-1",
    )
    [event] = answer["history"]
    assert event["kind"] == "moved"
    assert (event["from_group"], event["from_project"]) == ("unknown", "Unsorted")
    assert (event["to_group"], event["to_project"]) == ("neuro", "study-a")
    assert (event["files"], event["bytes"]) == (2, sum(len(body) for body in bodies))
    assert event["actor"] == "admin"
    [landed] = await _acquisitions(control_plane, group="neuro", project="study-a")
    assert landed["session_id"] == session_id
    stored = {file["sha256"] for file in landed["files"]}
    assert stored == {sha256_hex(body) for body in bodies}
    for file in landed["files"]:
        content = (await control_plane.admin.get(f"/api/v1/files/{file['id']}")).content
        assert sha256_hex(content) == file["sha256"]
    assert await _acquisitions(control_plane, group="unknown") == []
    shown = (await control_plane.admin.get(f"/api/v1/sessions/{session_id}")).json()
    assert shown == answer


async def test_a_move_to_an_unknown_project_or_onto_an_existing_session_is_refused(
    control_plane: ControlPlane,
) -> None:
    await _project(control_plane, "neuro", "study-a")
    await _ingest(control_plane, 1, subject="sub-1", session="ses-1")
    await _ingest(
        control_plane,
        1,
        subject="sub-1",
        session="ses-1",
        group="neuro",
        project="study-a",
        routing_reason="routed",
    )
    unsorted = await _acquisitions(control_plane, group="unknown")
    session_id = unsorted[0]["session_id"]

    unknown = await control_plane.admin.post(
        f"/api/v1/sessions/{session_id}/move", json={"group": "neuro", "project": "nope"}
    )
    clash = await control_plane.admin.post(
        f"/api/v1/sessions/{session_id}/move", json={"group": "neuro", "project": "study-a"}
    )
    missing = await control_plane.admin.post(
        f"/api/v1/sessions/{uuid.uuid4()}/move", json={"group": "neuro", "project": "study-a"}
    )

    assert unknown.status_code == 404
    assert "create it first" in unknown.json()["detail"]
    assert clash.status_code == 409
    assert missing.status_code == 404
    assert len(await _acquisitions(control_plane, group="unknown")) == 1


async def test_a_purged_session_is_gone_with_its_blobs_and_the_purge_is_recorded(
    control_plane: ControlPlane,
) -> None:
    await _ingest(control_plane, 3, subject="sub-oops", session="ses-1")
    kept = await _ingest(control_plane, 1, subject="sub-keep", session="ses-1")
    [acquisition] = await _acquisitions(control_plane, subject="sub-oops")
    session_id = acquisition["session_id"]
    root = control_plane.settings.blob_dir
    assert root is not None
    paths = [root / BlobStore.key_of(file["sha256"]) for file in acquisition["files"]]
    assert all(path.is_file() for path in paths)

    purged = await control_plane.admin.delete(f"/api/v1/sessions/{session_id}")

    assert purged.status_code == 200, purged.text
    answer = purged.json()
    assert (answer["files"], answer["blobs_removed"], answer["purged_by"]) == (3, 3, "admin")
    assert not any(path.exists() for path in paths)
    assert await _acquisitions(control_plane, subject="sub-oops") == []
    assert (await control_plane.admin.get(f"/api/v1/sessions/{session_id}")).status_code == 404
    [other] = await _acquisitions(control_plane, subject="sub-keep")
    assert (root / BlobStore.key_of(sha256_hex(kept[0]))).is_file()
    assert other["files"][0]["sha256"] == sha256_hex(kept[0])
    assert (await control_plane.admin.delete(f"/api/v1/sessions/{session_id}")).status_code == 404
