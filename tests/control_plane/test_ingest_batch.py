"""Batch ingest (`POST /api/v1/ingest/batch`) on SQLite and PostgreSQL: per-part outcomes in
request order, the same semantics as single ingest, refusal of one bad part, the caps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx2
import pytest
from sqlalchemy import func, select

from common.ingest import IngestTarget
from control_plane.errors import BatchTooLargeError
from control_plane.hierarchy.ingest_batch import BatchLimits, ingest_batch
from control_plane.models import File, Session
from tests.control_plane.harness import ControlPlane, post_ingest
from tests.control_plane.instances import DEFAULT_SERIES_UID, new_uid, part10, sha256_hex

BOUNDARY = "test-boundary-7f3a"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
TARGET = {
    "subject": "SUBJ-1",
    "session": "SESSION-1",
    "acquisition": "T1w",
    "series_instance_uid": DEFAULT_SERIES_UID,
}


def related_body(parts: Sequence[tuple[dict[str, str], bytes]]) -> bytes:
    """A multipart/related body of (part headers, bytes) pairs, framed with `BOUNDARY`."""
    body = bytearray()
    for headers, data in parts:
        body += f"--{BOUNDARY}\r\n".encode()
        for name, value in headers.items():
            body += f"{name}: {value}\r\n".encode()
        body += b"\r\n" + data + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return bytes(body)


def instance_part(
    data: bytes, sop_instance_uid: str, sha256: str | None = None
) -> tuple[dict[str, str], bytes]:
    """A part carrying one instance with its UID and (by default, correct) digest."""
    headers = {
        "Content-Type": "application/dicom",
        "X-Sop-Instance-Uid": sop_instance_uid,
        "X-Sha256": sha256 or sha256_hex(data),
    }
    return headers, data


async def post_batch(
    client: httpx2.AsyncClient,
    parts: Sequence[tuple[dict[str, str], bytes]],
    content_type: str = RELATED,
    **params: str,
) -> httpx2.Response:
    """POST a batch of `parts` with the default target, overridden or extended by `params`."""
    return await client.post(
        "/api/v1/ingest/batch",
        params=TARGET | params,
        content=related_body(parts),
        headers={"Content-Type": content_type},
    )


@pytest.fixture
async def agent(control_plane: ControlPlane) -> AsyncIterator[httpx2.AsyncClient]:
    """An agent client of site `hospital-a`; the group `neuro` has the project `study-a`."""
    await control_plane.admin.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})
    await control_plane.admin.post("/api/v1/groups/neuro/projects", json={"label": "study-a"})
    token = await control_plane.register_agent(site="hospital-a")
    async with control_plane.client(token) as client:
        yield client


async def _files(control_plane: ControlPlane) -> list[dict[str, Any]]:
    response = await control_plane.admin.get("/api/v1/acquisitions")
    assert response.status_code == 200
    return [file for item in response.json()["items"] for file in item["files"]]


async def _file_rows(control_plane: ControlPlane, sop_instance_uid: str) -> list[File]:
    async with control_plane.session() as session:
        rows = await session.scalars(
            select(File).where(File.sop_instance_uid == sop_instance_uid).order_by(File.created_at)
        )
        return list(rows)


def _stored_blobs(control_plane: ControlPlane) -> set[str]:
    root = control_plane.settings.blob_dir
    return {
        path.name for path in root.rglob("*") if path.is_file() and "incoming" not in path.parts
    }


async def test_batch_of_new_instances_is_stored_and_answered_in_request_order(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sops = [new_uid() for _ in range(5)]
    bodies = [part10(sop) for sop in sops]

    response = await post_batch(
        agent,
        [instance_part(body, sop) for body, sop in zip(bodies, sops, strict=True)],
        group="neuro",
        project="study-a",
        routing_string="fw://neuro/study-a",
    )

    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["group"], answer["project"], answer["routing_reason"]) == (
        "neuro",
        "study-a",
        "routed",
    )
    assert [item["sop_instance_uid"] for item in answer["items"]] == sops
    assert {item["status"] for item in answer["items"]} == {"created"}
    files = await _files(control_plane)
    assert {(f["id"], f["sop_instance_uid"], f["sha256"], f["size"]) for f in files} == {
        (item["file_id"], sop, sha256_hex(body), len(body))
        for item, sop, body in zip(answer["items"], sops, bodies, strict=True)
    }
    downloaded = await control_plane.admin.get(f"/api/v1/files/{answer['items'][2]['file_id']}")
    assert downloaded.content == bodies[2]


async def test_batch_mixing_new_known_and_changed_instances_is_created_exists_replaced(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    known, changed, new = new_uid(), new_uid(), new_uid()
    first = await post_ingest(agent, part10(known), sop_instance_uid=known, **_routed())
    old = await post_ingest(agent, part10(changed, variant=1), sop_instance_uid=changed)
    changed_body = part10(changed, variant=2)

    response = await post_batch(
        agent,
        [
            instance_part(part10(new), new),
            instance_part(part10(known), known),
            instance_part(changed_body, changed),
        ],
    )

    items = response.json()["items"]
    assert [item["status"] for item in items] == ["created", "exists", "replaced"]
    assert items[1]["file_id"] == first.json()["file_id"]
    old_row, new_row = await _file_rows(control_plane, changed)
    assert str(old_row.id) == old.json()["file_id"]
    assert str(old_row.replaced_by_id) == items[2]["file_id"] == str(new_row.id)
    assert old_row.replaced_at is not None
    assert new_row.replaced_at is None
    current = {f["sop_instance_uid"]: f["sha256"] for f in await _files(control_plane)}
    assert current[changed] == sha256_hex(changed_body)


async def test_batch_of_instances_all_stored_before_answers_exists_where_they_live(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()
    await post_ingest(agent, part10(sop), sop_instance_uid=sop, **_routed())

    # Sent again under another target, as a late retry after the routing changed would be.
    response = await post_batch(agent, [instance_part(part10(sop), sop)], subject="OTHER")

    answer = response.json()
    assert [item["status"] for item in answer["items"]] == ["exists"]
    assert (answer["group"], answer["project"], answer["routing_reason"]) == (
        "neuro",
        "study-a",
        "routed",
    )
    async with control_plane.session() as session:
        assert await session.scalar(select(func.count()).select_from(Session)) == 1


async def test_batch_repeating_an_instance_records_its_versions_in_order(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()
    v1, v2 = part10(sop, variant=1), part10(sop, variant=2)

    response = await post_batch(
        agent, [instance_part(v1, sop), instance_part(v1, sop), instance_part(v2, sop)]
    )

    items = response.json()["items"]
    assert [item["status"] for item in items] == ["created", "exists", "replaced"]
    assert items[0]["file_id"] == items[1]["file_id"] != items[2]["file_id"]
    old_row, new_row = await _file_rows(control_plane, sop)
    assert str(old_row.replaced_by_id) == str(new_row.id) == items[2]["file_id"]


async def test_corrupt_parts_are_refused_alone_while_the_others_are_stored(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    good, tampered, not_dicom, good_too = (new_uid() for _ in range(4))
    tampered_body = part10(tampered)

    response = await post_batch(
        agent,
        [
            instance_part(part10(good), good),
            instance_part(tampered_body, tampered, sha256=sha256_hex(tampered_body + b"x")),
            instance_part(b'{"not": "dicom"}', not_dicom),
            instance_part(part10(good_too), good_too),
        ],
    )

    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["sop_instance_uid"] for item in items] == [good, tampered, not_dicom, good_too]
    assert [item.get("status") for item in items] == ["created", None, None, "created"]
    assert "sha256 mismatch" in items[1]["error"]
    assert "Part-10" in items[2]["error"]
    assert {f["sop_instance_uid"] for f in await _files(control_plane)} == {good, good_too}
    assert _stored_blobs(control_plane) == {sha256_hex(part10(good)), sha256_hex(part10(good_too))}
    assert list((control_plane.settings.blob_dir / "incoming").iterdir()) == []


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"X-Sha256": "0" * 64}, "X-Sop-Instance-Uid"),
        ({"X-Sop-Instance-Uid": "not-a-uid", "X-Sha256": "0" * 64}, "X-Sop-Instance-Uid"),
        ({"X-Sop-Instance-Uid": "1.2.3", "X-Sha256": "XYZ"}, "X-Sha256"),
        ({"Content-Type": "text/plain", "X-Sop-Instance-Uid": "1.2.3"}, "application/dicom"),
    ],
)
async def test_part_with_unusable_headers_is_refused_with_the_header_named(
    control_plane: ControlPlane,
    agent: httpx2.AsyncClient,
    headers: dict[str, str],
    problem: str,
) -> None:
    good = new_uid()

    response = await post_batch(
        agent, [(headers, part10(new_uid())), instance_part(part10(good), good)]
    )

    refused, stored = response.json()["items"]
    assert problem in refused["error"]
    assert refused["sop_instance_uid"] in (None, headers.get("X-Sop-Instance-Uid"))
    assert stored["status"] == "created"


async def test_batch_whose_parts_are_all_refused_stores_nothing_and_names_no_destination(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sop = new_uid()

    response = await post_batch(agent, [instance_part(b"garbage", sop)])

    answer = response.json()
    assert (answer["group"], answer["project"], answer["routing_reason"]) == (None, None, None)
    assert await _files(control_plane) == []
    async with control_plane.session() as session:
        assert await session.scalar(select(func.count()).select_from(Session)) == 0


async def test_batch_for_an_unknown_group_falls_back_to_the_sites_unknown_group(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sops = [new_uid(), new_uid()]

    response = await post_batch(
        agent,
        [instance_part(part10(sop), sop) for sop in sops],
        group="nobody",
        project="study-a",
        routing_reason="routed",
        unknown_group="lost-and-found",
        unsorted_project="Triage",
    )

    answer = response.json()
    assert (answer["group"], answer["project"], answer["routing_reason"]) == (
        "lost-and-found",
        "Triage",
        "unknown_group",
    )
    listed = await control_plane.admin.get(
        "/api/v1/acquisitions", params={"group": "lost-and-found"}
    )
    [item] = listed.json()["items"]
    assert sorted(f["sop_instance_uid"] for f in item["files"]) == sorted(sops)


async def test_batch_for_an_unknown_project_goes_to_the_groups_unsorted_project(
    agent: httpx2.AsyncClient,
) -> None:
    sop = new_uid()

    response = await post_batch(
        agent, [instance_part(part10(sop), sop)], group="neuro", project="no-such-study"
    )

    answer = response.json()
    assert (answer["group"], answer["project"], answer["routing_reason"]) == (
        "neuro",
        "Unsorted",
        "unknown_project",
    )


async def test_batches_and_single_ingests_racing_on_one_new_session_store_each_instance_once(
    control_plane: ControlPlane, agent: httpx2.AsyncClient
) -> None:
    sops = [new_uid() for _ in range(6)]
    bodies = {sop: part10(sop) for sop in sops}
    batch = [instance_part(bodies[sop], sop) for sop in sops]

    responses = await asyncio.gather(
        post_batch(agent, batch, **_routed("new-study")),
        post_batch(agent, batch[::-1], **_routed("new-study")),
        *(
            post_ingest(agent, bodies[sop], sop_instance_uid=sop, **_routed("new-study"))
            for sop in sops
        ),
    )

    assert [response.status_code for response in responses] == [200] * len(responses)
    outcomes: dict[str, list[tuple[str, str]]] = {sop: [] for sop in sops}
    for response in responses[:2]:
        for item in response.json()["items"]:
            outcomes[item["sop_instance_uid"]].append((item["status"], item["file_id"]))
    for sop, response in zip(sops, responses[2:], strict=True):
        outcomes[sop].append((response.json()["status"], response.json()["file_id"]))
    for sop in sops:
        statuses = sorted(status for status, _ in outcomes[sop])
        assert statuses == ["created", "exists", "exists"], sop
        assert len({file_id for _, file_id in outcomes[sop]}) == 1
    async with control_plane.session() as session:
        assert await session.scalar(select(func.count()).select_from(File)) == len(sops)
        assert await session.scalar(select(func.count()).select_from(Session)) == 1


async def test_batch_with_another_media_type_is_415(agent: httpx2.AsyncClient) -> None:
    sop = new_uid()

    wrong_type = await post_batch(
        agent, [instance_part(part10(sop), sop)], content_type="application/dicom"
    )
    no_root_type = await post_batch(
        agent,
        [instance_part(part10(sop), sop)],
        content_type=f"multipart/related; boundary={BOUNDARY}",
    )

    assert wrong_type.status_code == 415
    assert no_root_type.status_code == 415
    assert 'type="application/dicom"' in no_root_type.json()["detail"]


async def test_batch_without_parts_or_with_broken_framing_is_400(agent: httpx2.AsyncClient) -> None:
    empty = await post_batch(agent, [])
    cut_off = await agent.post(
        "/api/v1/ingest/batch",
        params=TARGET,
        content=related_body([instance_part(b"x" * 200, new_uid())])[:-30],
        headers={"Content-Type": RELATED},
    )

    assert empty.status_code == 400
    assert "no part" in empty.json()["detail"]
    assert cut_off.status_code == 400
    assert "close delimiter" in cut_off.json()["detail"]


async def test_batch_query_is_validated_like_single_ingest(agent: httpx2.AsyncClient) -> None:
    sop = new_uid()

    response = await post_batch(agent, [instance_part(part10(sop), sop)], group="neuro")

    assert response.status_code == 422
    assert "group and project go together" in response.text


async def test_batch_over_the_instance_cap_is_413(agent: httpx2.AsyncClient) -> None:
    parts = [instance_part(b"x", new_uid()) for _ in range(BatchLimits().max_instances + 1)]

    response = await post_batch(agent, parts)

    assert response.status_code == 413


async def test_batch_over_the_byte_cap_is_refused_while_streaming(
    control_plane: ControlPlane,
) -> None:
    sops = [new_uid() for _ in range(3)]
    bodies = [part10(sop) for sop in sops]
    limits = BatchLimits(max_instances=8, max_bytes=len(bodies[0]) * 2 + 1)

    async def chunks() -> AsyncIterator[bytes]:
        yield related_body(
            [instance_part(body, sop) for body, sop in zip(bodies, sops, strict=True)]
        )

    async with control_plane.session() as session:
        with pytest.raises(BatchTooLargeError, match="exceed"):
            await ingest_batch(
                session,
                control_plane.resources.blobs,
                IngestTarget.model_validate(TARGET),
                RELATED,
                chunks(),
                None,
                limits,
            )
    assert await _files(control_plane) == []
    assert list((control_plane.settings.blob_dir / "incoming").iterdir()) == []


def _routed(project: str = "study-a") -> dict[str, str]:
    return {"group": "neuro", "project": project, "routing_reason": "routed"}
