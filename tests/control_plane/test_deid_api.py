"""De-identification through the API: a bad profile is refused at save time naming the key, and
the preview applies the site's profile with the site's salt, which it never shows."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from common.config import DeidConfig
from common.deid.engine import Deidentifier
from control_plane.models import Site
from tests.control_plane.harness import ControlPlane
from tests.support.dicom_factory import encode_part10, make_instance

PROFILE: dict[str, Any] = {
    "version": 1,
    "dicom": {
        "fields": [
            {"name": "PatientName", "replace-with": "REDACTED"},
            {"name": "PatientID", "hash": True},
            {"name": "SeriesInstanceUID", "hashuid": True},
        ]
    },
}


def _instance() -> bytes:
    return encode_part10(
        make_instance(
            patient_id="PREVIEW-PID",
            study_uid="1.2.826.0.1.3680043.10.547.1",
            series_uid="1.2.826.0.1.3680043.10.547.1.1",
            sop_uid="1.2.826.0.1.3680043.10.547.1.1.1",
            series_description="S",
            study_description="T",
            extra={"PatientName": "PREVIEW^NAME"},
        )
    )


async def _site(control_plane: ControlPlane, deid: dict[str, Any] | None = None) -> str:
    created = await control_plane.admin.post(
        "/api/v1/sites", json={"name": "hospital-a", "timezone": "UTC"}
    )
    assert created.status_code == 201, created.text
    if deid is not None:
        stored = await control_plane.admin.put(
            "/api/v1/sites/hospital-a/config", content=json.dumps({"deid": deid})
        )
        assert stored.status_code == 200, stored.text
    return "hospital-a"


async def _salt(control_plane: ControlPlane) -> str:
    async with control_plane.session() as session:
        salt = await session.scalar(select(Site.deid_salt).where(Site.name == "hospital-a"))
    assert salt
    return salt


async def test_a_bad_profile_is_422_naming_the_field(control_plane: ControlPlane) -> None:
    site = await _site(control_plane)
    fields = [{"name": "PatientName", "remove": True}, {"name": "PatientNmae", "remove": True}]
    bad = {"version": 1, "dicom": {"fields": fields}}

    response = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config", content=json.dumps({"deid": {"profile": bad}})
    )

    assert response.status_code == 422
    problems = response.json()["detail"]["problems"]
    assert any(problem.startswith("deid.profile.dicom.fields[1]: ") for problem in problems)
    assert "PatientNmae" in response.text


async def test_a_salt_in_the_profile_is_422(control_plane: ControlPlane) -> None:
    site = await _site(control_plane)
    with_salt = {"version": 1, "dicom": {"salt": "mine", "fields": []}}

    response = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config", content=json.dumps({"deid": {"profile": with_salt}})
    )

    assert response.status_code == 422
    assert "deid.profile.dicom.salt: " in response.text


async def test_options_without_basic_are_422(control_plane: ControlPlane) -> None:
    site = await _site(control_plane)

    response = await control_plane.admin.put(
        f"/api/v1/sites/{site}/config",
        content=json.dumps({"deid": {"profile": "none", "options": ["retain_uids"]}}),
    )

    assert response.status_code == 422
    assert "options apply to profile basic only" in response.text


async def test_preview_applies_the_sites_profile_with_the_sites_salt(
    control_plane: ControlPlane,
) -> None:
    site = await _site(control_plane, {"profile": PROFILE})
    data = _instance()

    response = await control_plane.admin.post(
        f"/api/v1/sites/{site}/deid/preview",
        content=data,
        headers={"Content-Type": "application/dicom"},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["site"], body["revision"], body["profile"]) == (site, 1, "document")
    changes = {change["keyword"]: change for change in body["changes"]}
    assert changes["PatientName"]["before"] == "PREVIEW^NAME"
    assert changes["PatientName"]["after"] == "REDACTED"
    # Same engine, same salt: the preview shows what the agent would upload.
    salt = await _salt(control_plane)
    expected = Deidentifier.from_config(DeidConfig(profile=PROFILE), salt)
    assert expected is not None
    assert changes["SeriesInstanceUID"]["after"] == expected.deidentify(data).series_instance_uid
    assert salt not in response.text


async def test_preview_under_basic_lists_removed_attributes(control_plane: ControlPlane) -> None:
    site = await _site(control_plane, {"profile": "basic", "options": ["retain_uids"]})

    response = await control_plane.admin.post(
        f"/api/v1/sites/{site}/deid/preview", content=_instance()
    )

    body = response.json()
    assert (body["profile"], body["options"]) == ("basic", ["retain_uids"])
    actions = {change["keyword"]: change["action"] for change in body["changes"]}
    assert actions["StudyDescription"] == "removed"
    assert actions["PatientIdentityRemoved"] == "added"
    assert "SOPInstanceUID" not in actions  # retain_uids


async def test_preview_without_a_profile_changes_nothing(control_plane: ControlPlane) -> None:
    site = await _site(control_plane)

    response = await control_plane.admin.post(
        f"/api/v1/sites/{site}/deid/preview", content=_instance()
    )

    assert response.json()["changes"] == []
    assert response.json()["profile"] == "none"


async def test_preview_of_what_is_not_dicom_is_422(control_plane: ControlPlane) -> None:
    site = await _site(control_plane, {"profile": "basic"})

    response = await control_plane.admin.post(
        f"/api/v1/sites/{site}/deid/preview", content=b"not dicom" * 30
    )

    assert response.status_code == 422
    assert "not a DICOM Part-10 instance" in response.text


async def test_preview_needs_the_admin(control_plane: ControlPlane) -> None:
    agent_token = await control_plane.register_agent()
    async with control_plane.client(agent_token) as agent:
        response = await agent.post("/api/v1/sites/hospital-a/deid/preview", content=_instance())
    anonymous = await control_plane.anonymous.post(
        "/api/v1/sites/hospital-a/deid/preview", content=_instance()
    )

    assert response.status_code == 403
    assert anonymous.status_code == 401


async def test_preview_of_an_unknown_site_is_404(control_plane: ControlPlane) -> None:
    response = await control_plane.admin.post(
        "/api/v1/sites/nowhere/deid/preview", content=_instance()
    )

    assert response.status_code == 404
