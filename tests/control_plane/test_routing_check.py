"""`POST /api/v1/routing/check`: where a routing string or header values would land, and why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.hierarchy.routing_check import edit_distance
from tests.control_plane.harness import ControlPlane


@pytest.fixture
async def site(control_plane: ControlPlane) -> str:
    admin = control_plane.admin
    (
        await admin.post("/api/v1/sites", json={"name": "st-marys", "timezone": "UTC"})
    ).raise_for_status()
    config = {
        "dicom": {
            "peers": [
                {"ae_title": "MR1", "host": "10.0.0.6"},
                {"ae_title": "PET1", "host": "10.0.0.7", "routing": {"fields": ["ImageComments"]}},
            ]
        },
        "routing": {"fields": ["StudyComments", "PatientComments"]},
        "upload_policy": {"field": "PatientComments", "strings": ["NOFW"]},
        "metadata": {"patterns": [{"field": "PatientID", "regex": "^(?P<subject>P\\d+)_"}]},
    }
    (
        await admin.put("/api/v1/sites/st-marys/config", content=json.dumps(config))
    ).raise_for_status()
    (await admin.post("/api/v1/groups", json={"id": "neuro", "label": "Neuro"})).raise_for_status()
    for project in ("study-parkinsons-2024", "study-ms"):
        (
            await admin.post("/api/v1/groups/neuro/projects", json={"label": project})
        ).raise_for_status()
    return "st-marys"


async def check(control_plane: ControlPlane, **body: Any) -> dict[str, Any]:
    response = await control_plane.admin.post("/api/v1/routing/check", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_valid_routing_string_lands_where_it_says(
    control_plane: ControlPlane, site: str
) -> None:
    answer = await check(control_plane, routing_string="fw://neuro/study-ms/sub-1/ses-2", site=site)
    assert (answer["group"], answer["project"], answer["subject"], answer["session"]) == (
        "neuro",
        "study-ms",
        "sub-1",
        "ses-2",
    )
    assert answer["reason"] == "routed"
    assert answer["suggestions"] == []


async def test_a_typo_in_the_group_lands_in_unknown_with_the_nearest_names(
    control_plane: ControlPlane, site: str
) -> None:
    answer = await check(control_plane, routing_string="fw://Nuero/study-ms", site=site)
    assert (answer["group"], answer["project"], answer["reason"]) == (
        "unknown",
        "Unsorted",
        "unknown_group",
    )
    assert answer["suggestions"] == [{"group": "neuro", "project": "study-ms"}]


async def test_a_typo_in_the_project_lands_in_the_groups_unsorted_with_suggestions(
    control_plane: ControlPlane, site: str
) -> None:
    answer = await check(control_plane, routing_string="fw://neuro/study-parkinson-2024", site=site)
    assert (answer["group"], answer["project"], answer["reason"]) == (
        "neuro",
        "Unsorted",
        "unknown_project",
    )
    assert answer["suggestions"] == [{"group": "neuro", "project": "study-parkinsons-2024"}]


async def test_an_unknown_group_far_from_any_gets_no_suggestion(
    control_plane: ControlPlane, site: str
) -> None:
    answer = await check(control_plane, routing_string="fw://cardiology/echo", site=site)
    assert answer["reason"] == "unknown_group"
    assert answer["suggestions"] == []


async def test_header_values_follow_the_sites_fields_patterns_and_policy(
    control_plane: ControlPlane, site: str
) -> None:
    answer = await check(
        control_plane,
        site=site,
        headers={
            "StudyComments": "fw://neuro/study-ms",
            "PatientComments": "fw://elsewhere/x",
            "PatientID": "P042_V1",
            "StudyDescription": "Brain",
        },
    )
    assert (answer["group"], answer["project"]) == ("neuro", "study-ms")
    assert (answer["subject"], answer["session"]) == ("P042", "Brain")

    skipped = await check(control_plane, site=site, headers={"PatientComments": "NOFW please"})
    assert (skipped["upload"], skipped["policy_reason"]) == (False, "opted_out")
    assert skipped["group"] is None


async def test_no_routing_string_lands_in_unknown_with_the_reason(
    control_plane: ControlPlane, site: str
) -> None:
    answer = await check(control_plane, site=site, headers={"PatientID": "X1"})
    assert (answer["group"], answer["project"], answer["reason"]) == (
        "unknown",
        "Unsorted",
        "no_routing_string",
    )


async def test_the_site_must_be_named_when_there_are_several(
    control_plane: ControlPlane, site: str
) -> None:
    await control_plane.admin.post("/api/v1/sites", json={"name": "other", "timezone": "UTC"})
    response = await control_plane.admin.post(
        "/api/v1/routing/check", json={"routing_string": "fw://neuro/study-ms"}
    )
    assert response.status_code == 400
    assert "site" in response.json()["detail"]
    empty = await control_plane.admin.post("/api/v1/routing/check", json={"site": site})
    assert empty.status_code == 422


@pytest.mark.parametrize(
    ("first", "second", "distance"),
    [("neuro", "nuero", 2), ("", "abc", 3), ("study", "study", 0), ("kitten", "sitting", 3)],
)
def test_edit_distance(first: str, second: str, distance: int) -> None:
    assert edit_distance(first, second) == distance


@pytest.mark.parametrize(
    ("calling_ae", "project", "routing_from"),
    [
        ("PET1", "study-parkinsons-2024", "dicom.peers[1].routing"),
        ("MR1", "study-ms", "routing"),
        (None, "study-ms", "routing"),
    ],
)
async def test_a_calling_ae_title_checks_under_that_scanners_routing(
    control_plane: ControlPlane,
    site: str,
    calling_ae: str | None,
    project: str,
    routing_from: str,
) -> None:
    headers = {
        "ImageComments": "fw://neuro/study-parkinsons-2024",
        "StudyComments": "fw://neuro/study-ms",
    }
    body: dict[str, Any] = {"site": site, "headers": headers}
    if calling_ae is not None:
        body["calling_ae_title"] = calling_ae

    answer = await check(control_plane, **body)

    assert (answer["project"], answer["routing_from"]) == (project, routing_from)


async def test_a_routing_string_alone_goes_into_the_scanners_first_field(
    control_plane: ControlPlane, site: str
) -> None:
    answer = await check(
        control_plane,
        site=site,
        calling_ae_title="PET1",
        routing_string="fw://neuro/study-ms",
        headers={"StudyComments": "fw://neuro/study-parkinsons-2024"},
    )

    assert answer["project"] == "study-ms"
    assert answer["routing_from"] == "dicom.peers[1].routing"


async def test_the_check_shows_the_session_metadata_the_patterns_extract(
    control_plane: ControlPlane, site: str
) -> None:
    config = {
        "metadata": {
            "patterns": [
                {"field": "StudyDescription", "regex": "^(?P<protocol>\\w+) (?P<visit>V\\d)$"}
            ]
        }
    }
    put = await control_plane.admin.put(f"/api/v1/sites/{site}/config", content=json.dumps(config))
    assert put.status_code == 200, put.text

    answer = await check(control_plane, site=site, headers={"StudyDescription": "BRAIN V2"})

    assert answer["metadata"] == {"protocol": "BRAIN", "visit": "V2"}


async def test_a_calling_ae_title_that_is_no_ae_title_is_422(
    control_plane: ControlPlane, site: str
) -> None:
    response = await control_plane.admin.post(
        "/api/v1/routing/check",
        json={"site": site, "routing_string": "fw://neuro/a", "calling_ae_title": "X" * 17},
    )

    assert response.status_code == 422
