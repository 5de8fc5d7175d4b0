"""Ingest into the built-in store: routing fallbacks, idempotency, replacement, integrity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from sqlalchemy import func, select

from control_plane.models import File, Session
from tests.control_plane.harness import ControlPlane, post_ingest
from tests.control_plane.instances import new_uid, part10, sha256_hex


@pytest.fixture
async def agent(control_plane: ControlPlane) -> AsyncIterator[httpx2.AsyncClient]:
    """An agent client of site `hospital-a`; the group `neuro` has the project `study-a`."""
    await control_plane.admin.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
    await control_plane.admin.post("/api/v1/groups/neuro/projects", json={"label": "study-a"})
    token = await control_plane.register_agent(site="hospital-a")
    async with control_plane.client(token) as client:
        yield client


async def _acquisitions(control_plane: ControlPlane, **filters: str) -> list[dict[str, Any]]:
    response = await control_plane.admin.get("/api/v1/acquisitions", params=filters)
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _file_rows(control_plane: ControlPlane, sop_instance_uid: str) -> list[File]:
    async with control_plane.session() as session:
        rows = await session.scalars(
            select(File).where(File.sop_instance_uid == sop_instance_uid).order_by(File.created_at)
        )
        return list(rows)


def _blob_files(control_plane: ControlPlane) -> list[str]:
    root = control_plane.settings.blob_dir
    return sorted(
        path.name for path in root.rglob("*") if path.is_file() and "incoming" not in path.parts
    )


def _incoming_files(control_plane: ControlPlane) -> list[str]:
    return [path.name for path in (control_plane.settings.blob_dir / "incoming").iterdir()]


async def test_routed_instance_lands_in_its_group_and_project(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()
    body = part10(sop)

    response = await post_ingest(
        agent,
        body,
        sop_instance_uid=sop,
        group="neuro",
        project="study-a",
        routing_reason="routed",
        routing_string="fw://neuro/study-a",
    )

    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "created"
    assert (answer["group"], answer["project"], answer["routing_reason"]) == (
        "neuro",
        "study-a",
        "routed",
    )
    [item] = await _acquisitions(control_plane)
    assert item["group"] == "neuro"
    assert item["project"] == "study-a"
    assert (item["subject"], item["session"], item["label"]) == ("SUBJ-1", "SESSION-1", "T1w")
    assert item["routing_reason"] == "routed"
    assert item["routing_string"] == "fw://neuro/study-a"
    assert item["files"] == [
        {
            "id": answer["file_id"],
            "sop_instance_uid": sop,
            "sha256": sha256_hex(body),
            "size": len(body),
        }
    ]


async def test_unknown_group_falls_back_to_the_sites_unknown_group_created_on_first_use(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()

    response = await post_ingest(
        agent,
        part10(sop),
        sop_instance_uid=sop,
        group="nobody",
        project="study-a",
        routing_string="fw://nobody/study-a",
        unknown_group="lost-and-found",
        unsorted_project="Triage",
    )

    assert response.status_code == 200
    answer = response.json()
    assert (answer["group"], answer["project"], answer["routing_reason"]) == (
        "lost-and-found",
        "Triage",
        "unknown_group",
    )
    groups = (await control_plane.admin.get("/api/v1/groups")).json()["items"]
    assert "lost-and-found" in [group["id"] for group in groups]
    [item] = await _acquisitions(control_plane, group="lost-and-found")
    assert item["routing_reason"] == "unknown_group"
    assert item["routing_string"] == "fw://nobody/study-a"


async def test_unknown_project_goes_to_the_groups_unsorted_project(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()

    response = await post_ingest(
        agent, part10(sop), sop_instance_uid=sop, group="neuro", project="no-such-study"
    )

    answer = response.json()
    assert (answer["group"], answer["project"], answer["routing_reason"]) == (
        "neuro",
        "Unsorted",
        "unknown_project",
    )
    projects = (await control_plane.admin.get("/api/v1/groups/neuro/projects")).json()["items"]
    assert sorted(project["label"] for project in projects) == ["Unsorted", "study-a"]


async def test_instance_without_routing_string_goes_to_unknown_unsorted(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()

    response = await post_ingest(
        agent, part10(sop), sop_instance_uid=sop, routing_reason="no_routing_string"
    )

    answer = response.json()
    assert (answer["group"], answer["project"], answer["routing_reason"]) == (
        "unknown",
        "Unsorted",
        "no_routing_string",
    )
    [item] = await _acquisitions(control_plane, group="unknown", project="Unsorted")
    assert item["routing_reason"] == "no_routing_string"
    assert item["routing_string"] is None


async def test_invalid_routing_string_is_recorded_with_its_reason(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()

    response = await post_ingest(
        agent,
        part10(sop),
        sop_instance_uid=sop,
        routing_reason="invalid_label",
        routing_string="fw://neuro/../etc",
    )

    assert response.json()["routing_reason"] == "invalid_label"
    [item] = await _acquisitions(control_plane, group="unknown")
    assert item["routing_string"] == "fw://neuro/../etc"


async def test_same_instance_twice_is_stored_once_and_answered_exists(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()
    body = part10(sop)

    first = await post_ingest(agent, body, sop_instance_uid=sop, group="neuro", project="study-a")
    second = await post_ingest(agent, body, sop_instance_uid=sop, group="neuro", project="study-a")

    assert first.json()["status"] == "created"
    assert second.json()["status"] == "exists"
    assert second.json()["file_id"] == first.json()["file_id"]
    assert len(await _file_rows(control_plane, sop)) == 1
    assert _blob_files(control_plane) == [sha256_hex(body)]


async def test_same_sop_with_other_bytes_replaces_and_keeps_the_old_version(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()
    old_body, new_body = part10(sop, variant=1), part10(sop, variant=2)

    old = await post_ingest(agent, old_body, sop_instance_uid=sop)
    new = await post_ingest(agent, new_body, sop_instance_uid=sop)

    assert new.json()["status"] == "replaced"
    assert new.json()["file_id"] != old.json()["file_id"]
    [item] = await _acquisitions(control_plane)
    assert [file["sha256"] for file in item["files"]] == [sha256_hex(new_body)]
    old_row, new_row = await _file_rows(control_plane, sop)
    assert str(old_row.replaced_by_id) == new.json()["file_id"]
    assert old_row.replaced_at is not None
    assert new_row.replaced_at is None
    downloaded_old = await control_plane.admin.get(f"/api/v1/files/{old.json()['file_id']}")
    assert downloaded_old.content == old_body


async def test_digest_mismatch_is_400_and_stores_nothing(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()
    body = part10(sop)

    response = await post_ingest(
        agent, body, sop_instance_uid=sop, sha256=sha256_hex(body + b"tampered")
    )

    assert response.status_code == 400
    assert "sha256 mismatch" in response.json()["detail"]
    assert await _file_rows(control_plane, sop) == []
    assert _blob_files(control_plane) == []
    assert _incoming_files(control_plane) == []


async def test_body_that_is_not_part10_is_400(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    body = b'{"not": "dicom"}'

    response = await post_ingest(agent, body, sop_instance_uid=new_uid())

    assert response.status_code == 400
    assert "Part-10" in response.json()["detail"]
    assert _blob_files(control_plane) == []


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("sha256", "XYZ"),
        ("sop_instance_uid", "not.a.uid!"),
        ("subject", "bell\x07"),
        ("routing_reason", "lucky"),
    ],
)
async def test_malformed_query_parameter_is_422(
    agent: httpx2.AsyncClient, param: str, value: str
) -> None:
    sop = new_uid()
    params = {"sop_instance_uid": sop, param: value}

    response = await post_ingest(agent, part10(sop), **params)

    assert response.status_code == 422


async def test_group_without_project_is_422(agent: httpx2.AsyncClient) -> None:
    sop = new_uid()

    response = await post_ingest(agent, part10(sop), sop_instance_uid=sop, group="neuro")

    assert response.status_code == 422
    assert "group and project go together" in response.text


async def test_concurrent_identical_ingests_store_one_file(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()
    body = part10(sop)

    responses = await asyncio.gather(
        *(
            post_ingest(agent, body, sop_instance_uid=sop, group="neuro", project="new-study")
            for _ in range(8)
        )
    )

    assert [response.status_code for response in responses] == [200] * 8
    statuses = sorted(response.json()["status"] for response in responses)
    assert statuses == ["created"] + ["exists"] * 7
    assert len({response.json()["file_id"] for response in responses}) == 1
    assert len(await _file_rows(control_plane, sop)) == 1
    async with control_plane.session() as session:
        sessions = await session.scalar(select(func.count()).select_from(Session))
    assert sessions == 1


async def test_concurrent_instances_of_one_new_series_share_one_acquisition(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sops = [new_uid() for _ in range(6)]

    responses = await asyncio.gather(
        *(post_ingest(agent, part10(sop), sop_instance_uid=sop) for sop in sops)
    )

    assert {response.json()["status"] for response in responses} == {"created"}
    [item] = await _acquisitions(control_plane)
    assert sorted(file["sop_instance_uid"] for file in item["files"]) == sorted(sops)


async def test_session_records_the_agents_site(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()
    await post_ingest(agent, part10(sop), sop_instance_uid=sop)

    async with control_plane.session() as session:
        recorded = await session.scalar(select(Session))
    assert recorded is not None
    assert recorded.site_id is not None
