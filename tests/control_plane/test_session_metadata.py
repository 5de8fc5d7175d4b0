"""Session metadata in the built-in store (SQLite and PostgreSQL): what each series brings is
merged into its session (first value stays, later different values kept as conflicts), shown
by the session and the acquisition listing, moved with the session and purged with it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select

from control_plane.models import SessionMetadataValue
from tests.control_plane.harness import ControlPlane, post_ingest
from tests.control_plane.instances import new_uid, part10

PHI_LIKE = "DOE^JANE-1961"


async def _ingest_series(
    control_plane: ControlPlane,
    metadata: dict[str, str] | None,
    *,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    subject: str = "sub-1",
    session: str = "ses-1",
) -> dict[str, Any]:
    """One instance of a (new, unless given) series of `subject`/`session` with `metadata`."""
    series_uid = series_uid or new_uid()
    sop_uid = sop_uid or new_uid()
    extra = {} if metadata is None else {"metadata": json.dumps(metadata)}
    response = await post_ingest(
        control_plane.admin,
        part10(sop_uid, series_instance_uid=series_uid),
        sop_instance_uid=sop_uid,
        series_instance_uid=series_uid,
        subject=subject,
        session=session,
        **extra,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _session_of(control_plane: ControlPlane, subject: str = "sub-1") -> dict[str, Any]:
    listing = await control_plane.admin.get("/api/v1/acquisitions", params={"subject": subject})
    session_id = listing.json()["items"][0]["session_id"]
    response = await control_plane.admin.get(f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    shown: dict[str, Any] = response.json()
    return shown


@pytest.mark.parametrize(
    ("series", "metadata", "conflicts"),
    [
        pytest.param([{"protocol": "BRAIN"}], {"protocol": "BRAIN"}, {}, id="one series"),
        pytest.param([None, {}], {}, {}, id="no metadata"),
        pytest.param(
            [{"protocol": "BRAIN"}, {"protocol": "BRAIN"}],
            {"protocol": "BRAIN"},
            {},
            id="same value again changes nothing",
        ),
        pytest.param(
            [{"protocol": "BRAIN"}, {"protocol": "SPINE"}],
            {"protocol": "BRAIN"},
            {"protocol": ["SPINE"]},
            id="a later different value is a conflict, the first stays",
        ),
        pytest.param(
            [{"protocol": "BRAIN"}, {"visit": "V2"}],
            {"protocol": "BRAIN", "visit": "V2"},
            {},
            id="a later series adds a name",
        ),
        pytest.param(
            [{"protocol": "A"}, {"protocol": "B"}, {"protocol": "A"}, {"protocol": "C"}],
            {"protocol": "A"},
            {"protocol": ["B", "C"]},
            id="each different value is kept once, oldest first",
        ),
        pytest.param(
            [None, {"protocol": "BRAIN"}],
            {"protocol": "BRAIN"},
            {},
            id="a series without metadata leaves room for a later one",
        ),
    ],
)
async def test_series_metadata_merges_into_the_session(
    control_plane: ControlPlane,
    series: Sequence[dict[str, str] | None],
    metadata: dict[str, str],
    conflicts: dict[str, list[str]],
) -> None:
    for brought in series:
        await _ingest_series(control_plane, brought)

    shown = await _session_of(control_plane)

    assert shown["metadata"] == metadata
    assert shown["metadata_conflicts"] == conflicts
    [acquisition, *_] = (
        await control_plane.admin.get("/api/v1/acquisitions", params={"subject": "sub-1"})
    ).json()["items"]
    assert acquisition["session_metadata"] == metadata


async def test_a_resent_instance_does_not_add_its_metadata_again(
    control_plane: ControlPlane,
) -> None:
    series, sop = new_uid(), new_uid()
    await _ingest_series(control_plane, {"protocol": "BRAIN"}, series_uid=series, sop_uid=sop)
    again = await _ingest_series(
        control_plane, {"protocol": "BRAIN"}, series_uid=series, sop_uid=sop
    )

    assert again["status"] == "exists"
    async with control_plane.session() as session:
        assert await session.scalar(select(func.count()).select_from(SessionMetadataValue)) == 1


async def test_metadata_stays_with_a_moved_session_and_goes_with_a_purged_one(
    control_plane: ControlPlane,
) -> None:
    await control_plane.admin.post("/api/v1/groups", json={"id": "neuro", "label": "neuro"})
    await control_plane.admin.post("/api/v1/groups/neuro/projects", json={"label": "study-a"})
    await _ingest_series(control_plane, {"protocol": "BRAIN"})
    await _ingest_series(control_plane, {"protocol": "SPINE"})
    session_id = (await _session_of(control_plane))["id"]

    moved = await control_plane.admin.post(
        f"/api/v1/sessions/{session_id}/move", json={"group": "neuro", "project": "study-a"}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["metadata"] == {"protocol": "BRAIN"}
    assert moved.json()["metadata_conflicts"] == {"protocol": ["SPINE"]}

    purged = await control_plane.admin.delete(f"/api/v1/sessions/{session_id}")
    assert purged.status_code == 200, purged.text
    async with control_plane.session() as session:
        assert await session.scalar(select(func.count()).select_from(SessionMetadataValue)) == 0


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        ('{"protocol": ', "metadata is not JSON"),
        (json.dumps({"bad name": PHI_LIKE}), "the name is not a pattern group name"),
        (json.dumps({"name": PHI_LIKE + "\n"}), "control or invisible formatting character"),
        (json.dumps({"name": PHI_LIKE * 100}), "longer than 1024 characters"),
        (json.dumps({"name": ""}), "is empty"),
        (json.dumps({f"n{i}": "x" for i in range(65)}), "at most 64"),
    ],
)
async def test_metadata_the_store_cannot_keep_is_422_without_echoing_it(
    control_plane: ControlPlane, metadata: str, why: str
) -> None:
    sop = new_uid()
    response = await post_ingest(
        control_plane.admin, part10(sop), sop_instance_uid=sop, metadata=metadata
    )

    assert response.status_code == 422
    assert why in response.text
    assert "DOE" not in response.text


async def test_series_racing_on_one_new_session_keep_one_value_and_every_other_as_a_conflict(
    control_plane: ControlPlane,
) -> None:
    values = ["A", "B", "C", "D", "E", "F"]

    answers = await asyncio.gather(
        *(_ingest_series(control_plane, {"protocol": value, "site": "oxford"}) for value in values)
    )

    assert {answer["status"] for answer in answers} == {"created"}
    shown = await _session_of(control_plane)
    kept = shown["metadata"]["protocol"]
    assert shown["metadata"]["site"] == "oxford"
    assert sorted([kept, *shown["metadata_conflicts"]["protocol"]]) == values
    assert "site" not in shown["metadata_conflicts"]
